"""Settings of the web collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WebEnvConfig:
    action_timeout_s: float = 30.0
