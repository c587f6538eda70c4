"""Rendering trajectories into text, in one place for every stage.

Turns follow AgentWorldBench's layout: each user message is "### Turn t", the initial state
under "**Current State:**" in turn 1, then "**Action:**" and a ```json block. Earlier
observations answer as "**Environment Observation:**"; the target observation is wrapped in
<predicted_observation> tags, optionally after reasoning.
"""

from __future__ import annotations

from lwm.domains import OBS_CLOSE, OBS_OPEN, Domain
from lwm.schema import Trajectory

HISTORY_OBS = "**Environment Observation:**"


def user_turn(domain: Domain, traj: Trajectory, t: int) -> str:
    """The user message of turn t (1-based)."""
    parts = [f"### Turn {t}"]
    if t == 1:
        parts.append(f"**Current State:**\n{traj.initial_observation or '(empty)'}")
    parts.append(f"**Action:**\n```json\n{domain.render_action(traj.steps[t - 1].action)}\n```")
    return "\n".join(parts)


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
        segments.append(("\n\n" + user_turn(domain, traj, t) + "\n\n" + HISTORY_OBS + "\n", 0))
        segments.append((traj.steps[t - 1].observation, t))
    return segments


def cpt_document(domain: Domain, traj: Trajectory) -> str:
    """The whole trajectory as a chain of state transitions."""
    return "".join(text for text, _ in cpt_segments(domain, traj))


def agentworldbench_record(domain: Domain, traj: Trajectory, t: int,
                           max_history: int | None = None) -> dict:
    """One eval sample in AgentWorldBench's JSONL layout."""
    messages, answer = turn_messages(domain, traj, t, max_history)
    return {
        "task": domain.name,
        "id": f"{traj.id}-t{t}",
        "prompt": messages,
        "response": [answer],
        "current_prompt": messages[-1]["content"],
        "system_str": messages[0]["content"],
        "turn_idx": t,
        "total_turns": len(traj.steps),
    }
