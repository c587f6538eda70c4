"""Domain registry: built-in domains and user domains loaded by import path from config."""

from __future__ import annotations

import importlib

from lwm.domains.base import OBS_CLOSE, OBS_OPEN, ActionError, Domain, Verdict, extract_observation
from lwm.domains.registered import AndroidDomain, McpDomain, OsDomain, SearchDomain, SweDomain
from lwm.domains.terminal import TerminalDomain
from lwm.domains.tools import ToolDomain
from lwm.domains.web import WebDomain

_REGISTRY: dict[str, type[Domain]] = {}


def register(cls: type[Domain]) -> type[Domain]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (TerminalDomain, SweDomain, SearchDomain, McpDomain, WebDomain, OsDomain, AndroidDomain):
    register(_cls)


def register_path(path: str) -> type[Domain]:
    """Register a user domain given as 'package.module:ClassName'."""
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load domain '{path}': {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise ValueError(f"'{path}' is not a Domain subclass")
    return register(cls)


def register_extra(extra_domains) -> None:
    """Register config's `data.extra_domains` ({name: 'module:Class'}); each class's `name`
    must be its key. Idempotent, so every process (prepare's workers too) can call it."""
    for name, path in extra_domains.items():
        cls = register_path(path)
        if cls.name != name:
            raise ValueError(f"data.extra_domains.{name}: '{path}' is the domain '{cls.name}'")


def get_domain(name: str) -> Domain:
    if name not in _REGISTRY:
        raise KeyError(f"unknown domain '{name}' (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]()


def domain_names() -> list[str]:
    return sorted(_REGISTRY)


__all__ = ["Domain", "ToolDomain", "ActionError", "Verdict", "OBS_OPEN", "OBS_CLOSE",
           "extract_observation", "register", "register_path", "register_extra", "get_domain",
           "domain_names"]
