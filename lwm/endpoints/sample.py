"""The view of one sample in AgentWorldBench's JSONL layout, ours or the public benchmark's.

Two shapes share the layout. The public files, and our held-out sets, hold every turn of the
trajectory as strings (`prompt[j]` the action prompt, `response[j]` the real observation) and
`turn_idx` says which turn is scored; older held-out sets of ours (and SFT/RL rows) hold the chat
messages of the scored turn (history windowed) and its tagged target. `view()` turns either into the same thing: chat messages
whose history is the earlier turns' real observations (for the benchmark's layout, exactly the
messages its evaluation sends), the reference observation cleaned as the benchmark cleans it,
and the history as text (what the judge reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from lwm.domains import extract_observation
from lwm.domains.base import clean_marker


def domain_of(rec: dict) -> str:
    """The domain of a sample: the benchmark writes tasks as 'group/domain' in places."""
    return str(rec["task"]).split("/")[-1]


@dataclass
class Sample:
    id: str
    domain: str
    messages: list[dict]   # what the world model is asked: system, history, current action
    reference: str         # the real observation, marker and tags removed
    history: str           # earlier turns as text, for the judge
    current: str           # the current action prompt
    turn_idx: int


def _text(item) -> str:
    return item["content"] if isinstance(item, dict) else str(item)


def view(rec: dict) -> Sample:
    prompt, response = rec["prompt"], rec["response"]
    prompt = [prompt] if isinstance(prompt, str) else list(prompt)
    response = [response] if isinstance(response, str) else list(response)
    turn = int(rec.get("turn_idx") or 1)
    if prompt and isinstance(prompt[0], dict):          # ours: chat messages of this turn
        messages = list(prompt)
        if rec.get("system_str") and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": rec["system_str"]}] + messages
        body = [m for m in messages if m["role"] != "system"]
        pairs = [(body[i]["content"], body[i + 1]["content"]) for i in range(0, len(body) - 1, 2)]
        current = body[-1]["content"]
        reference = extract_observation(_text(response[-1]))[0]  # a tagged target
    else:                                               # the benchmark's: every turn as strings
        k = max(turn - 1, 0)
        pairs = [(str(prompt[j]), str(response[j])) for j in range(min(k, len(prompt), len(response)))]
        current = rec.get("current_prompt") or (prompt[k] if k < len(prompt) else "")
        messages = [{"role": "system", "content": rec["system_str"]}] if rec.get("system_str") else []
        for action, observation in pairs:
            messages += [{"role": "user", "content": action},
                         {"role": "assistant", "content": observation}]
        # the benchmark asks with prompt[k] and shows its judge current_prompt
        messages.append({"role": "user", "content": str(prompt[k]) if k < len(prompt) else current})
        reference = clean_marker(str(response[k])) if k < len(response) else ""
    history = "\n\n".join(f"{a}\n{o}" for a, o in pairs)
    return Sample(rec["id"], domain_of(rec), messages, reference, history, current, turn)
