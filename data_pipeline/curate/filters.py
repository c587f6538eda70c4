"""The recipe's trajectory filters and turn clean-up, each switchable and counted.

Whole-trajectory filters return a reason to drop (or None). Turn clean-up returns the kept
trajectory plus, per step, whether it becomes a training sample: retry cycles and GUI no-change
turns stay in the state chain (later turns' history needs them) but are not expanded. What a
domain is (tool or GUI), its action grammar and what an error looks like, the domain says.
"""

from __future__ import annotations

import re
from dataclasses import replace

from lwm.config import FilterConfig
from lwm.domains import Domain, get_domain
from lwm.schema import Trajectory

_EMPTY_ACTIONS = {"", "[]", "{}", "null", '""', "noop()"}
# The environment itself broke (the app server is down, the browser or emulator died); an
# action's own failure (a blocked URL, a missing element) is data and stays.
_GUI_FAILURE = re.compile(r"(?i)(net::ERR_(?:CONNECTION_REFUSED|CONNECTION_RESET|CONNECTION_CLOSED|"
                          r"EMPTY_RESPONSE)|page crashed|target closed|browser has been closed|"
                          r"accessibility tree (?:is )?unavailable|environment (?:error|failure)|"
                          r"emulator (?:crashed|offline)|session not created)")


def drop_reason(traj: Trajectory, cfg: FilterConfig, domain: Domain | None = None) -> str | None:
    """Why the whole trajectory is filtered out, or None to keep it."""
    domain = domain or get_domain(traj.domain)
    if cfg.undeclared_tools and domain.undeclared_tool(traj) is not None:
        return "undeclared tool"
    if cfg.gui_failures and domain.kind == "gui":
        observations = [traj.initial_observation] + [s.observation for s in traj.steps]
        if any(_GUI_FAILURE.search(o) for o in observations) or not any(o.strip() for o in observations):
            return "gui environment failure"
    if len(traj.steps) < cfg.min_turns:
        return "too few turns"
    return None


def clean_turns(traj: Trajectory, cfg: FilterConfig, domain: Domain | None = None
                ) -> tuple[Trajectory, list[bool], dict]:
    """Strip empty-action turns; mark retry cycles and GUI no-change turns as context only.

    A retry cycle is a malformed ("garbage") action, in the domain's grammar, answered by an
    error and followed by a retry; its turns stay in the chain so later states stay consistent,
    but are never targets.
    """
    domain = domain or get_domain(traj.domain)
    stats = {"empty_actions": 0, "retry_turns": 0, "gui_no_change": 0}
    steps = traj.steps
    if cfg.strip_empty_actions:
        kept = [s for s in steps if s.action.strip() not in _EMPTY_ACTIONS]
        stats["empty_actions"] = len(steps) - len(kept)
        steps = kept
    sample = [True] * len(steps)
    for i, step in enumerate(steps):
        if (cfg.skip_retry_cycles and i + 1 < len(steps) and domain.is_malformed(step.action)
                and domain.is_error(step.observation)):
            sample[i] = False
            stats["retry_turns"] += 1
        previous = steps[i - 1].observation if i else traj.initial_observation
        if cfg.skip_gui_no_change and domain.kind == "gui" and step.observation == previous:
            if sample[i]:
                stats["gui_no_change"] += 1
            sample[i] = False
    return replace(traj, steps=steps), sample, stats
