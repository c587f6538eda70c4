"""Who acts in the terminal: the scripted task library, an OpenAI-compatible model, or a replay.

A policy makes one Agent per episode index; the runner asks the agent for an action after
every screen until it returns None. Agents record why they stopped in `meta["end_reason"]`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from data_pipeline.collect.tasks import make_task
from data_pipeline.collect.terminal import ActionError, parse_action
from lwm.domains.terminal import TerminalDomain
from lwm.schema import Step, TrajectoryError, read_jsonl, validate


class Agent:
    task: str = ""
    meta: dict
    max_steps: int | None = None     # None: the run's collect.max_steps

    def act(self, screen: str, steps: list[Step]) -> str | None:
        raise NotImplementedError

    def finish(self, steps: list[Step]) -> None:
        """Called once the episode ends, with every step taken."""


class Policy:
    name = ""
    version = 1

    def __init__(self, cfg):
        self.cfg = cfg               # the full composed config

    def size(self) -> int:
        """How many episodes a run holds."""
        return self.cfg.collect.num_trajectories

    def agent(self, index: int) -> Agent:
        raise NotImplementedError


# --- scripted ------------------------------------------------------------------------------

class _ScriptAgent(Agent):
    def __init__(self, task):
        self.task, self.actions = task.instruction, task.actions
        self.max_steps = len(task.actions)  # a script is never cut short
        self.meta = {"task_name": task.name, "params": task.params, "end_reason": "script_done"}

    def act(self, screen, steps):
        return self.actions[len(steps)] if len(steps) < len(self.actions) else None


class ScriptedPolicy(Policy):
    name = "scripted"

    def agent(self, index):
        return _ScriptAgent(make_task(index, self.cfg.seed))


# --- openai --------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.S)


def extract_keystrokes(reply: str) -> list[dict] | None:
    """The first JSON array in a model reply that is a keystroke list; None if there is none."""
    text = _THINK.sub("", reply or "")
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        try:
            return parse_action(json.dumps(value))
        except ActionError:
            continue
    return None


_AGENT_PROMPT = """You are an agent working in a Linux terminal: {description}, {width}x{height}.
Complete the task by sending keystrokes. Answer every turn with {action_format}
Reply with exactly one JSON list and nothing else; reply [] when the task is complete."""


class _ChatAgent(Agent):
    def __init__(self, policy: "OpenAIPolicy", index: int):
        self.policy = policy
        # The model's task comes from the scripted library, so prompts vary like the scripts do.
        task = make_task(index, policy.cfg.seed)
        self.task = task.instruction
        self.meta = {"task_name": task.name, "params": task.params, "model": policy.pcfg.model,
                     "end_reason": "max_steps"}
        c = policy.cfg.collect
        domain = TerminalDomain(c.width, c.height)
        self.messages = [{"role": "system", "content": _AGENT_PROMPT.format(
            description=domain.description, width=c.width, height=c.height,
            action_format=domain.action_format)}]

    def act(self, screen, steps):
        label = f"Task: {self.task}\n\nScreen:\n" if not steps else "Screen:\n"
        self.messages.append({"role": "user", "content": f"{label}```\n{screen}\n```"})
        p = self.policy.pcfg
        response = self.policy.client.chat.completions.create(
            model=p.model, messages=self.messages, temperature=p.temperature,
            max_tokens=p.max_tokens)
        reply = response.choices[0].message.content or ""
        batches = extract_keystrokes(reply)
        if batches is None:
            self.meta.update(end_reason="unparseable_reply", last_reply=reply[:2000])
            return None
        if not batches:
            self.meta["end_reason"] = "agent_done"
            return None
        action = json.dumps(batches, ensure_ascii=False)
        self.messages.append({"role": "assistant", "content": action})
        return action


class OpenAIPolicy(Policy):
    name = "openai"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pcfg = cfg.policy
        if not self.pcfg.model:
            raise ValueError("policy.model is required for the openai policy")
        from openai import OpenAI
        self.client = OpenAI(base_url=self.pcfg.base_url, timeout=self.pcfg.timeout_s,
                             api_key=os.environ.get(self.pcfg.api_key_env) or "EMPTY", max_retries=2)

    def agent(self, index):
        return _ChatAgent(self, index)


# --- replay --------------------------------------------------------------------------------

class ReplayRecordError(ValueError):
    """A recorded trajectory that cannot be replayed; the runner quarantines it."""


class _ReplayAgent(Agent):
    def __init__(self, rec: dict):
        self.task, self.actions = rec.get("task", ""), [s["action"] for s in rec["steps"]]
        self.recorded = [s["observation"] for s in rec["steps"]]
        self.max_steps = len(self.actions)  # reproduce the record, whatever collect.max_steps says
        self.meta = {**rec.get("meta", {}), "replay_of": rec["id"], "replay_source": rec["source"],
                     "end_reason": "replay_done"}

    def act(self, screen, steps):
        if len(steps) >= len(self.actions):
            return None
        action = self.actions[len(steps)]
        parse_action(action)  # a malformed record raises ActionError before anything is sent
        return action

    def finish(self, steps):
        # How much of the record the real environment reproduced (timestamps, hashes differ).
        same = sum(s.observation == o for s, o in zip(steps, self.recorded))
        self.meta["replay_match"] = round(same / max(len(self.recorded), 1), 4)


class ReplayPolicy(Policy):
    name = "replay"

    def __init__(self, cfg):
        super().__init__(cfg)
        path = Path(cfg.policy.replay_path)
        if not cfg.policy.replay_path or not path.is_file():
            raise FileNotFoundError(f"policy.replay_path '{cfg.policy.replay_path}' is not a file")
        self.path = path
        # Records stay raw here: a bad one is quarantined when its episode runs, not at start.
        self.records = list(read_jsonl(path))  # (line number, record or TrajectoryError)

    def size(self):
        return min(len(self.records), self.cfg.collect.num_trajectories)

    def agent(self, index):
        lineno, rec = self.records[index]
        if isinstance(rec, TrajectoryError):
            raise ReplayRecordError(str(rec))
        try:
            validate(rec, str(self.path), lineno)
        except TrajectoryError as e:
            raise ReplayRecordError(str(e)) from None
        return _ReplayAgent(rec)


POLICIES = {p.name: p for p in (ScriptedPolicy, OpenAIPolicy, ReplayPolicy)}


def make_policy(cfg) -> Policy:
    if cfg.policy.name not in POLICIES:
        raise ValueError(f"unknown policy '{cfg.policy.name}' (known: {', '.join(POLICIES)})")
    return POLICIES[cfg.policy.name](cfg)
