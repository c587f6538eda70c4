"""Settings of the mcp collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class McpEnvConfig:
    action_timeout_s: float = 30.0
