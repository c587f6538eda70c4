"""Settings of the search collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SearchEnvConfig:
    action_timeout_s: float = 30.0
