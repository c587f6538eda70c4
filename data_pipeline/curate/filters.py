"""The recipe's trajectory filters and turn clean-up, each switchable and counted.

Whole-trajectory filters return a reason to drop (or None). Turn clean-up returns the kept
trajectory plus, per step, whether it becomes a training sample: retry cycles and GUI no-change
turns stay in the state chain (later turns' history needs them) but are not expanded.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from lwm.config import FilterConfig
from lwm.schema import Trajectory

GUI_DOMAINS = ("web", "os", "android")
TOOL_DOMAINS = ("mcp", "swe")
_EMPTY_ACTIONS = {"", "[]", "{}", "null", '""', "noop()"}
_ERROR = re.compile(r"(?i)\b(error|exception|traceback|invalid|not found|unknown|failed|"
                    r"no such|cannot|unrecognized|malformed)\b")
# The environment itself broke (the app server is down, the browser or emulator died); an
# action's own failure (a blocked URL, a missing element) is data and stays.
_GUI_FAILURE = re.compile(r"(?i)(net::ERR_(?:CONNECTION_REFUSED|CONNECTION_RESET|CONNECTION_CLOSED|"
                          r"EMPTY_RESPONSE)|page crashed|target closed|browser has been closed|"
                          r"accessibility tree (?:is )?unavailable|environment (?:error|failure)|"
                          r"emulator (?:crashed|offline)|session not created)")


def tool_name(action: str) -> str | None:
    """The tool an action calls, for JSON tool-call actions ({"name": ...})."""
    try:
        call = json.loads(action)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(call, dict):
        name = call.get("name") or (call.get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    return None


def declared_tools(traj: Trajectory) -> set[str]:
    names = set()
    for tool in traj.tools:
        name = tool.get("name") or (tool.get("function") or {}).get("name")
        if isinstance(name, str):
            names.add(name)
    return names


def drop_reason(traj: Trajectory, cfg: FilterConfig) -> str | None:
    """Why the whole trajectory is filtered out, or None to keep it."""
    if cfg.undeclared_tools and traj.domain in TOOL_DOMAINS:
        declared = declared_tools(traj)
        for step in traj.steps:
            name = tool_name(step.action)
            if name is not None and name not in declared:
                return "undeclared tool"
    if cfg.gui_failures and traj.domain in GUI_DOMAINS:
        observations = [traj.initial_observation] + [s.observation for s in traj.steps]
        if any(_GUI_FAILURE.search(o) for o in observations) or not any(o.strip() for o in observations):
            return "gui environment failure"
    if len(traj.steps) < cfg.min_turns:
        return "too few turns"
    return None


def is_error(observation: str) -> bool:
    return bool(_ERROR.search(observation[:2000]))


def clean_turns(traj: Trajectory, cfg: FilterConfig, is_malformed=None) -> tuple[Trajectory, list[bool], dict]:
    """Strip empty-action turns; mark retry cycles and GUI no-change turns as context only.

    A retry cycle is a malformed ("garbage") action answered by an error and followed by a
    retry; its turns stay in the chain so later states stay consistent, but are never targets.
    `is_malformed(action)` is the domain's action check (None: every action is well formed).
    """
    stats = {"empty_actions": 0, "retry_turns": 0, "gui_no_change": 0}
    steps = traj.steps
    if cfg.strip_empty_actions:
        kept = [s for s in steps if s.action.strip() not in _EMPTY_ACTIONS]
        stats["empty_actions"] = len(steps) - len(kept)
        steps = kept
    sample = [True] * len(steps)
    for i, step in enumerate(steps):
        if (cfg.skip_retry_cycles and is_malformed is not None and i + 1 < len(steps)
                and is_malformed(step.action) and is_error(step.observation)):
            sample[i] = False
            stats["retry_turns"] += 1
        previous = steps[i - 1].observation if i else traj.initial_observation
        if cfg.skip_gui_no_change and traj.domain in GUI_DOMAINS and step.observation == previous:
            if sample[i]:
                stats["gui_no_change"] += 1
            sample[i] = False
    return replace(traj, steps=steps), sample, stats
