"""Rendering trajectories into text, in one place for every stage, and reading turns back.

Turns follow AgentWorldBench's layout: each user message is "### Turn t"; turn 1 shows the
initial state under "**Current State:**" (followed by a blank line) in domains that have one;
then "**Action:**" and a fenced block: ```json with the action indented by 2, or ```python for
code actions. Earlier observations answer as "**Environment Observation:**"; the target
observation is wrapped in <predicted_observation> tags, optionally after reasoning. A CPT
document chains the turns as the benchmark's few-shot examples and judge context do: each turn,
a newline, its observation, a blank line.

Held-out samples are written in the benchmark's own JSONL layout (`agentworldbench_record`): the
whole trajectory's turns as strings in `prompt` and `response`, the scored turn in `turn_idx`
(1-based) and `current_prompt`, an integer `id`, the world model's system prompt in
`system_str`; `trajectory_id` (ours, ignored by the benchmark's code) names the trajectory.
"""

from __future__ import annotations

import hashlib
import json
import re

from lwm.domains import OBS_CLOSE, OBS_OPEN, Domain
from lwm.domains.base import HISTORY_OBS
from lwm.schema import Trajectory


def user_turn(domain: Domain, traj: Trajectory, t: int) -> str:
    """The user message of turn t (1-based)."""
    head = f"### Turn {t}\n"
    if t == 1 and domain.shows_state():
        head += f"**Current State:**\n{traj.initial_observation or '(empty)'}\n\n"
    action = domain.render_action(traj.steps[t - 1].action)
    return f"{head}**Action:**\n```{domain.action_language}\n{action}\n```"


_TURN = re.compile(r"### Turn (\d+)\n")
_ACTION = re.compile(r"\*\*Action:\*\*\n```(\w*)\n")
_STATE = "**Current State:**\n"


def parse_turn(text: str) -> tuple[int, str | None, str]:
    """(turn, initial state or None, action) of a user turn as `user_turn` writes it (and the
    benchmark's turns are written): the inverse of user_turn. Raises ValueError."""
    head = _TURN.match(text)
    actions = list(_ACTION.finditer(text))
    if not head or not actions:
        raise ValueError("not a '### Turn t ... **Action:** ```...```' turn")
    block = actions[-1]
    end = text.find("\n```", block.end() - 1)
    if end < 0:
        raise ValueError("the action block is not closed")
    body = text[block.end():end] if end >= block.end() else ""
    state = None
    before = text[head.end():block.start()]
    if before.startswith(_STATE):
        state = before[len(_STATE):].removesuffix("\n").removesuffix("\n")
        state = "" if state == "(empty)" else state
    if block.group(1) != "json":
        return int(head.group(1)), state, body
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"action block is not JSON ({e.msg})") from None
    # render_action quotes plain-text actions and re-indents JSON ones: invert both.
    action = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return int(head.group(1)), state, action


def history_observation(observation: str) -> str:
    return f"{HISTORY_OBS}\n{observation}"


def target(observation: str, reasoning: str = "") -> str:
    body = f"{OBS_OPEN}\n{observation}\n{OBS_CLOSE}"
    return f"<think>\n{reasoning}\n</think>\n{body}" if reasoning else body


# Which system-prompt variant each stage trains on (the recipe's assignment).
RL_VARIANT, CPT_VARIANT, FIRST_SFT_VARIANT = 0, 1, 2


def turn_messages(domain: Domain, traj: Trajectory, t: int, max_history: int | None = None,
                  variant: int = RL_VARIANT) -> tuple[list[dict], dict]:
    """Prompt messages for predicting turn t's observation, and the target assistant message.

    `max_history` keeps only the latest earlier turns (turn 1 keeps its initial state only
    when it is in the window; the state of older turns lives on in later observations).
    """
    first = 1 if max_history is None else max(1, t - max_history)
    messages = [{"role": "system", "content": domain.system_prompt(traj, variant)}]
    for i in range(first, t):
        messages.append({"role": "user", "content": user_turn(domain, traj, i)})
        messages.append({"role": "assistant",
                         "content": history_observation(traj.steps[i - 1].observation)})
    messages.append({"role": "user", "content": user_turn(domain, traj, t)})
    return messages, {"role": "assistant", "content": target(traj.steps[t - 1].observation)}


def cpt_segments(domain: Domain, traj: Trajectory) -> list[tuple[str, int]]:
    """The CPT document as (text, turn) segments: turn t > 0 marks the body of observation t
    (what loss masking by turn type may thin out); 0 marks everything else."""
    segments = [(domain.system_prompt(traj, CPT_VARIANT), 0)]
    for t in range(1, len(traj.steps) + 1):
        segments.append(("\n\n" + user_turn(domain, traj, t) + "\n" + HISTORY_OBS + "\n", 0))
        segments.append((traj.steps[t - 1].observation, t))
    return segments


def cpt_document(domain: Domain, traj: Trajectory) -> str:
    """The whole trajectory as a chain of state transitions."""
    return "".join(text for text, _ in cpt_segments(domain, traj))


# Where a CPT document's observation ends: the next turn's header (or the document's end).
DOCUMENT_TURN = "\n\n### Turn "


def document_prompt(domain: Domain, messages: list[dict]) -> str:
    """Chat messages (system, earlier turns, current action) as the CPT document renders them
    (cpt_segments), up to where the current turn's observation starts: what a model that has
    only seen CPT documents is asked. With the whole history it is a prefix of the trajectory's
    cpt_document; the system prompt takes CPT's variant when it is the domain's own prompt."""
    system, body = (messages[0]["content"], messages[1:]) if messages[0]["role"] == "system" else ("", messages)
    ask = domain.PROMPT_VARIANTS[RL_VARIANT].format(env=domain.description)
    if system.startswith(ask):
        system = domain.PROMPT_VARIANTS[CPT_VARIANT].format(env=domain.description) + system[len(ask):]
    parts = [system]
    for i in range(0, len(body) - 1, 2):
        parts.append(f"\n\n{body[i]['content']}\n{body[i + 1]['content']}")
    parts.append(f"\n\n{body[-1]['content']}\n{HISTORY_OBS}\n")
    return "".join(parts)


def document_observation(continuation: str) -> tuple[str, bool]:
    """The observation a document continuation predicts (up to the next turn's header), and
    whether the model ended it there, as its documents end an observation."""
    head = continuation.find(DOCUMENT_TURN)
    return (continuation, False) if head < 0 else (continuation[:head], True)


def sample_id(trajectory_id: str, t: int) -> int:
    """The benchmark's integer id of turn t's sample: stable, below 2**60."""
    return int(hashlib.blake2b(f"{trajectory_id}-t{t}".encode(), digest_size=8).hexdigest()[:15], 16)


def agentworldbench_record(domain: Domain, traj: Trajectory, t: int) -> dict:
    """Turn t's eval sample in AgentWorldBench's JSONL layout (the whole trajectory, every turn
    as a string; the benchmark's evaluation reads turns 1..t)."""
    prompts = [user_turn(domain, traj, i) for i in range(1, len(traj.steps) + 1)]
    return {
        "task": domain.name,
        "id": sample_id(traj.id, t),
        "prompt": prompts,
        "response": [history_observation(s.observation) for s in traj.steps],
        "current_prompt": prompts[t - 1],
        "system_str": domain.system_prompt(traj),
        "turn_idx": t,
        "total_turns": len(traj.steps),
        "trajectory_id": traj.id,
    }
