"""Settings of the swe collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SweEnvConfig:
    action_timeout_s: float = 30.0
