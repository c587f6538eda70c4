"""What a domain's collector provides; the runner and the policies are domain-agnostic.

A Collector bundles, for one domain: its real environment (reset/step/close, tool definitions),
its scripted task library, and how an LLM policy is prompted and its reply turned into an
action. The action grammar is the domain's (lwm/domains), shared with prepare's filters.
Collectors register by domain name, like domains do.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# ActionError: an action the environment cannot execute (malformed in its domain's grammar);
# the episode is quarantined. Re-exported for the collectors.
from lwm.domains import ActionError, domain_names, get_domain  # noqa: F401


@dataclass
class ScriptedTask:
    name: str
    instruction: str
    actions: list[str]                       # action strings in the domain's format
    params: dict = field(default_factory=dict)


class Environment:
    """One real environment, reused across episodes; reset() starts a fresh, wiped episode."""

    tools: list[dict] = []                   # tool definitions of the current episode

    def reset(self, task: ScriptedTask | None = None) -> str:
        """Start an episode (set up for `task` when given); returns the initial observation."""
        raise NotImplementedError

    def step(self, action: str) -> str:
        """Execute one action; returns the observation. Raises ActionError on a malformed action.
        An action that fails in the environment (a missing file, a tool error) is not an error:
        its failure is the observation."""
        raise NotImplementedError

    def close(self) -> None:
        """End the episode and wipe what it left."""


class Collector:
    domain: str = ""
    version: int = 1

    def __init__(self, collect_cfg):
        self.cfg = collect_cfg

    def environment(self) -> Environment:
        raise NotImplementedError

    def task(self, index: int, seed: int) -> ScriptedTask:
        """Scripted task `index` of a run, with parameters drawn from (seed, index)."""
        raise NotImplementedError

    def check_action(self, action: str) -> None:
        """Raise ActionError if `action` is not a well-formed action of this domain (the
        domain owns the grammar)."""
        get_domain(self.domain).check_action(action)

    # --- for LLM policies (policy=openai) --------------------------------------------------
    def agent_prompt(self) -> str:
        """The system prompt of an LLM agent acting in this environment."""
        raise NotImplementedError

    def parse_reply(self, reply: str) -> str | None:
        """The action in an LLM reply ('' when the agent says it is done; None if unparseable)."""
        raise NotImplementedError


_COLLECTORS: dict[str, str] = {
    "terminal": "data_pipeline.collect.terminal_collector:TerminalCollector",
    "swe": "data_pipeline.collect.swe:SweCollector",
    "search": "data_pipeline.collect.search:SearchCollector",
    "mcp": "data_pipeline.collect.mcp:McpCollector",
    "web": "data_pipeline.collect.web:WebCollector",
    "os": "data_pipeline.collect.os_desktop:OsCollector",
}


def register_collector(domain: str, path: str) -> None:
    """Register a collector as 'package.module:Class' (imported only when used)."""
    _COLLECTORS[domain] = path


def _collector_path(domain: str) -> str:
    """A built-in collector, else the one a registered domain names (`Domain.collector`)."""
    if domain in _COLLECTORS:
        return _COLLECTORS[domain]
    return get_domain(domain).collector if domain in domain_names() else ""


def collector_names() -> list[str]:
    return sorted(d for d in {*_COLLECTORS, *domain_names()} if _collector_path(d))


def get_collector(domain: str, collect_cfg) -> Collector:
    path = _collector_path(domain)
    if not path:
        raise ValueError(f"no collector for domain '{domain}' (collectors: "
                         f"{', '.join(collector_names())}); import its trajectories instead")
    module, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Collector)):
        raise ValueError(f"domain '{domain}': its collector '{path}' is not a Collector subclass "
                         "(data_pipeline.collect.base.Collector)")
    return cls(collect_cfg)
