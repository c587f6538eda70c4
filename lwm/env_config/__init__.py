"""Typed settings of each domain's collection environment, one module per domain
(composed into `collect.<domain>` of the main config)."""

from lwm.env_config.mcp import McpEnvConfig
from lwm.env_config.os import OsEnvConfig
from lwm.env_config.search import SearchEnvConfig
from lwm.env_config.swe import SweEnvConfig
from lwm.env_config.web import WebEnvConfig

__all__ = ["McpEnvConfig", "OsEnvConfig", "SearchEnvConfig", "SweEnvConfig", "WebEnvConfig"]
