"""Settings of the os collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OsEnvConfig:
    action_timeout_s: float = 30.0
