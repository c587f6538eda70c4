"""AgentWorldBench JSONL (one sample per turn, as lwm.render.agentworldbench_record writes it)
back into trajectories.

A sample for turn t holds turns 1..t-1 as (user, assistant) history, turn t's user message as
`current_prompt` and turn t's observation as the target. Samples of one trajectory share an id
prefix (`<trajectory id>-t<turn>`); each turn's own sample gives its action and observation, and
the longest history fills turns whose sample is missing.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from lwm.domains import extract_observation
from lwm.render import HISTORY_OBS
from lwm.schema import Step, Trajectory

from data_pipeline.ingest.common import Reject, jsonl_records

_TURN_ID = re.compile(r"^(.*)-t(\d+)$")
_HEADER = re.compile(r"^### Turn (\d+)\n")
_ACTION = "**Action:**\n```json\n"
_STATE = "**Current State:**\n"
_TOOLS = "Tools the agent can call:\n"
_TASK = "The agent's task: "


def parse_user_turn(text: str) -> tuple[int, str | None, str]:
    """(turn, initial state or None, action) of a '### Turn t' message."""
    m = _HEADER.match(text)
    cut = text.rfind(_ACTION)
    if not m or cut < 0 or not text.endswith("\n```"):
        raise ValueError("not a '### Turn t ... **Action:** ```json ...```' message")
    head, body = text[m.end():cut], text[cut + len(_ACTION):-4]
    state = None
    if head.startswith(_STATE):
        state = head[len(_STATE):].removesuffix("\n")
        state = "" if state == "(empty)" else state
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"action block is not JSON ({e.msg})") from None
    # render_action quotes plain-text actions and re-dumps JSON ones: invert both.
    action = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return int(m.group(1)), state, action


def parse_system(system: str) -> tuple[str, list]:
    """The task and tool definitions that Domain.system_prompt appended, if any."""
    task, tools = "", []
    for part in system.split("\n\n"):
        if part.startswith(_TASK):
            task = system[system.index(part) + len(_TASK):]
            break
    if _TOOLS in system:
        start = system.index(_TOOLS) + len(_TOOLS)
        try:
            tools, _ = json.JSONDecoder().raw_decode(system, start)
        except json.JSONDecodeError:
            tools = []
    return task, tools if isinstance(tools, list) else []


def _history_obs(text: str) -> str:
    return text[len(HISTORY_OBS) + 1:] if text.startswith(HISTORY_OBS + "\n") else text


def convert(path: Path, cfg) -> Iterator[Trajectory | Reject]:
    groups: dict[str, list[tuple[str, int, dict]]] = defaultdict(list)
    for where, lineno, rec in jsonl_records(path):
        if isinstance(rec, Reject):
            yield rec
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), list):
            yield Reject(where, lineno, "prompt", "expected a list of chat messages")
            continue
        m = _TURN_ID.match(str(rec.get("id", "")))
        groups[m.group(1) if m else str(rec.get("id") or f"{where}:{lineno}")].append(
            (where, lineno, rec))
    for traj_id, samples in groups.items():
        try:
            yield _trajectory(traj_id, samples, cfg)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            where, lineno, _ = samples[0]
            yield Reject(where, lineno, getattr(e, "field", "prompt"), f"{traj_id}: {e}")


def _trajectory(traj_id: str, samples: list, cfg) -> Trajectory:
    actions: dict[int, str] = {}
    observations: dict[int, str] = {}
    initial = None
    longest = max(samples, key=lambda s: len(s[2]["prompt"]))[2]
    for _, _, rec in sorted(samples, key=lambda s: len(s[2]["prompt"])):
        messages = rec["prompt"]
        turns = [m for m in messages if m.get("role") == "user"]
        for i, msg in enumerate(messages):
            if msg.get("role") != "user":
                continue
            t, state, action = parse_user_turn(msg["content"])
            actions.setdefault(t, action)
            if state is not None and initial is None:
                initial = state
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            if nxt is not None and nxt.get("role") == "assistant":
                observations.setdefault(t, _history_obs(nxt["content"]))
        if turns and rec.get("response"):
            t, _, _ = parse_user_turn(turns[-1]["content"])
            observations[t] = extract_observation(rec["response"][0]["content"])[0]
    total = max(actions)
    missing = [t for t in range(1, total + 1) if t not in actions or t not in observations]
    if missing:
        raise ValueError(f"turns {missing} are in no sample")
    system = next((m["content"] for m in longest["prompt"] if m.get("role") == "system"),
                  longest.get("system_str", ""))
    task, tools = parse_system(system)
    domain = cfg.ingest.domain or longest.get("task") or ""
    if not domain:
        raise ValueError("no domain: the records have no 'task' field; set ingest.domain")
    return Trajectory(id=traj_id, domain=domain, source="ingest.agentworldbench", task=task,
                      tools=tools, initial_observation=initial or "",
                      steps=[Step(actions[t], observations[t]) for t in range(1, total + 1)],
                      meta={"samples": len(samples)})
