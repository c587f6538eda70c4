"""Settings of the mcp collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class McpEnvConfig:
    action_timeout_s: float = 30.0     # one tool call
    startup_timeout_s: float = 30.0    # a server's start, initialize and tools/list
    # Where the servers' executables are. Both must lie under /usr: the sandbox sees only the
    # host's /usr (read-only). Python servers (mcp-server-git, mcp-server-time) live in a venv
    # of the system Python; the npm ones (@modelcontextprotocol/server-*) in npm's global bin.
    python_bin: str = "/usr/local/lib/lwm-mcp/bin"  # the Python servers' bin folder
    node_bin: str = "/usr/bin"         # the npm servers' bin folder
    memory_mb: int = 4096              # address-space cap per process (node reserves a lot)
