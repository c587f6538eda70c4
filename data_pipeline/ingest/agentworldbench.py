"""AgentWorldBench JSONL back into trajectories, in either layout (detected per record):

- the benchmark's (and our held-out sets'): `prompt` and `response` list every turn of the
  trajectory as strings ("### Turn t ... **Action:** ```...```" and "**Environment
  Observation:**\\n..."), one record per scored turn. Records of one trajectory share its turns;
  they are grouped by `trajectory_id` (ours) or else by their turns (`_same_trajectory`), and the
  record with the most turns gives the trajectory.
- our older one: `prompt` holds the chat messages of one turn (history windowed) and `response`
  its tagged target; ids are `<trajectory id>-t<turn>`. Each turn's own sample gives its action
  and observation, and the longest history fills turns whose sample is missing.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from lwm.domains import extract_observation
from lwm.identity import digest
from lwm.render import HISTORY_OBS, parse_turn
from lwm.schema import MALFORMED, Step, Trajectory

from data_pipeline.ingest.common import Reject, jsonl_records, malformed

_TURN_ID = re.compile(r"^(.*)-t(\d+)$")
_TOOLS = "Tools the agent can call:\n"
_TASK = "The agent's task: "


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


def _layout(rec) -> str | None:
    """'turns' (the benchmark's), 'chat' (our older one) or None."""
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), list) or not rec["prompt"]:
        return None
    if all(isinstance(p, str) for p in rec["prompt"]):
        return "turns"
    if all(isinstance(p, dict) for p in rec["prompt"]):
        return "chat"
    return None


def convert(path: Path, cfg) -> Iterator[Trajectory | Reject]:
    groups: dict[tuple[str, str], list[tuple[str, int, dict]]] = defaultdict(list)
    unnamed: dict[str, list[tuple[str, int, dict]]] = defaultdict(list)
    for where, lineno, rec in jsonl_records(path):
        if isinstance(rec, Reject):
            yield rec
            continue
        try:
            group = _group(rec, where, lineno)
        except MALFORMED as e:  # a value nested past what str() or the digest can take
            group = malformed(where, lineno, e)
        if isinstance(group, Reject):
            yield group
        elif group[0] == "unnamed":
            unnamed[group[1]].append((where, lineno, rec))
        else:
            groups[group].append((where, lineno, rec))
    for samples in unnamed.values():
        for key, members in _same_trajectory(samples).items():
            groups[("turns", key)] = members
    for (layout, traj_id), samples in groups.items():
        try:
            yield (_from_turns if layout == "turns" else _from_chat)(traj_id, samples, cfg)
        except MALFORMED as e:
            where, lineno, _ = samples[0]
            yield Reject(where, lineno, getattr(e, "field", "prompt"), f"{traj_id}: {e}")


def _group(rec, where: str, lineno: int) -> tuple[str, str] | Reject:
    """The group a record joins: ("turns" | "chat", trajectory id), ("unnamed", bucket) for
    benchmark records without a trajectory id (grouped by their turns later), or a Reject."""
    layout = _layout(rec)
    if layout is None:
        return Reject(where, lineno, "prompt", "expected a list of turn strings (the benchmark's "
                      "layout) or of chat messages")
    if layout == "turns" and rec.get("trajectory_id"):
        return "turns", str(rec["trajectory_id"])
    if layout == "turns":
        return "unnamed", digest([str(rec.get("task", "")), str(rec.get("system_str", "")), rec["prompt"][0]])
    m = _TURN_ID.match(str(rec.get("id", "")))
    return "chat", m.group(1) if m else str(rec.get("id") or f"{where}:{lineno}")


def _same_trajectory(samples: list) -> dict[str, list]:
    """Records without a trajectory id that start alike, grouped by trajectory: records with
    the same turns are one trajectory, and a record whose turns begin another's (a file that
    keeps only the turns up to the scored one) joins the longer one. Never merges records whose
    turns differ."""
    turns = lambda rec: (rec["prompt"], rec.get("response") if isinstance(rec.get("response"), list) else [])
    out: dict[str, list] = {}
    heads: list[tuple[str, list, list]] = []
    for sample in sorted(samples, key=lambda s: -len(s[2]["prompt"])):
        prompts, responses = turns(sample[2])
        n = len(prompts)
        home = next((k for k, p, r in heads if p[:n] == prompts and r[:len(responses)] == responses), None)
        if home is None:
            home = "awb-" + digest([prompts, responses])[:16]
            heads.append((home, prompts, responses))
        out.setdefault(home, []).append(sample)
    return out


def _domain(cfg, rec: dict) -> str:
    domain = cfg.ingest.domain or str(rec.get("task") or "").split("/")[-1]
    if not domain:
        raise ValueError("no domain: the records have no 'task' field; set ingest.domain")
    return domain


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _from_turns(traj_id: str, samples: list, cfg) -> Trajectory:
    rec = max(samples, key=lambda s: len(s[2]["prompt"]))[2]
    prompts, responses = rec["prompt"], rec.get("response")
    if not isinstance(responses, list) or len(responses) != len(prompts) \
            or not all(isinstance(r, str) for r in responses):
        raise _FieldError("response", f"expected {len(prompts)} observation strings, one per turn "
                          "of 'prompt'")
    steps, initial = [], ""
    for j, text in enumerate(prompts):
        try:
            t, state, action = parse_turn(text)
        except ValueError as e:
            raise _FieldError(f"prompt[{j}]", str(e)) from None
        if t != j + 1:
            raise _FieldError(f"prompt[{j}]", f"is turn {t}, expected turn {j + 1}")
        if j == 0 and state is not None:
            initial = state
        steps.append(Step(action, _history_obs(responses[j])))
    task, tools = parse_system(str(rec.get("system_str", "")))
    return Trajectory(id=traj_id, domain=_domain(cfg, rec), source="ingest.agentworldbench",
                      task=task, tools=tools, initial_observation=initial, steps=steps,
                      meta={"samples": len(samples)})


def _from_chat(traj_id: str, samples: list, cfg) -> Trajectory:
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
            t, state, action = parse_turn(msg["content"])
            actions.setdefault(t, action)
            if state is not None and initial is None:
                initial = state
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            if nxt is not None and nxt.get("role") == "assistant":
                observations.setdefault(t, _history_obs(nxt["content"]))
        if turns and rec.get("response"):
            t, _, _ = parse_turn(turns[-1]["content"])
            observations[t] = extract_observation(rec["response"][0]["content"])[0]
    total = max(actions)
    missing = [t for t in range(1, total + 1) if t not in actions or t not in observations]
    if missing:
        raise ValueError(f"turns {missing} are in no sample")
    system = next((m["content"] for m in longest["prompt"] if m.get("role") == "system"),
                  longest.get("system_str", ""))
    task, tools = parse_system(system)
    return Trajectory(id=traj_id, domain=_domain(cfg, longest), source="ingest.agentworldbench",
                      task=task, tools=tools, initial_observation=initial or "",
                      steps=[Step(actions[t], observations[t]) for t in range(1, total + 1)],
                      meta={"samples": len(samples)})
