"""Domain registry: built-in domains and user domains loaded by import path from config."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

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


def _import(module: str, path: str, key: str):
    """`module`, with the current directory importable (the `lwm` script, unlike `python -m`,
    does not put it on sys.path). A module found there is also put on PYTHONPATH, so the
    processes this one starts (torchrun ranks, Slurm jobs it submits) import it wherever they run."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.append(cwd)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):  # not the module's own imports
            raise ValueError(
                f"{key}: cannot import module '{module}' (from '{path}'): {e}. Run lwm from the "
                f"folder that holds it (now {cwd}) or put that folder on PYTHONPATH "
                f"(PYTHONPATH=/path/to/folder lwm ...)") from e
        raise ValueError(f"{key}: importing module '{module}' (from '{path}') failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - an error inside the user's module: say where
        raise ValueError(f"{key}: importing module '{module}' (from '{path}') failed: "
                         f"{type(e).__name__}: {e}") from e
    where = Path(getattr(mod, "__file__", None) or cwd).resolve()
    if where.is_relative_to(Path(cwd).resolve()):
        entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if not any(Path(p).resolve() == Path(cwd).resolve() for p in entries):
            os.environ["PYTHONPATH"] = os.pathsep.join([*entries, cwd])
    return mod


def register_path(path: str, key: str = "domain") -> type[Domain]:
    """Register a user domain given as 'package.module:ClassName'; `key` names the config key
    it came from, for the error."""
    module, sep, attr = str(path).partition(":")
    if not (module and sep and attr):
        raise ValueError(f"{key}: '{path}' is not 'package.module:ClassName'")
    mod = _import(module, path, key)
    cls = getattr(mod, attr, None)
    if cls is None:
        found = sorted(n for n, v in vars(mod).items() if isinstance(v, type) and issubclass(v, Domain)
                       and v.__module__ == mod.__name__)
        raise ValueError(f"{key}: module '{module}' ({mod.__file__}) has no '{attr}' "
                         f"(its Domain subclasses: {', '.join(found) or 'none'})")
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise ValueError(f"{key}: '{path}' is not a Domain subclass (lwm.domains.Domain)")
    return register(cls)


def register_extra(extra_domains) -> None:
    """Register config's `data.extra_domains` ({name: 'module:Class'}); each class's `name`
    must be its key. Idempotent, so every process (prepare's and collect's workers, torchrun
    ranks, Slurm tasks) calls it."""
    for name, path in (extra_domains or {}).items():
        cls = register_path(path, f"data.extra_domains.{name}")
        if cls.name != name:
            raise ValueError(f"data.extra_domains.{name}: '{path}' is the domain '{cls.name}'")


def run_domains(domains, extra_domains) -> list[str]:
    """The run's domains: `data.domains` plus every domain `data.extra_domains` declares, unless
    `data.domains` already names one of those (then it is the user's own selection)."""
    domains, extra = list(domains), list(extra_domains or {})
    if any(d in extra for d in domains):
        return domains
    return domains + [d for d in extra if d not in domains]


def get_domain(name: str) -> Domain:
    if name not in _REGISTRY:
        raise KeyError(f"unknown domain '{name}' (registered: {', '.join(sorted(_REGISTRY))}); a "
                       f"domain of your own is declared with data.extra_domains={{{name}: "
                       "package.module:ClassName} or a data preset that declares it")
    return _REGISTRY[name]()


def domain_names() -> list[str]:
    return sorted(_REGISTRY)


__all__ = ["Domain", "ToolDomain", "ActionError", "Verdict", "OBS_OPEN", "OBS_CLOSE",
           "extract_observation", "register", "register_path", "register_extra", "run_domains", "get_domain",
           "domain_names"]
