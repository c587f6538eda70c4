"""Who acts: the domain's scripted task library, an OpenAI-compatible model, or a replay.

A policy makes one Agent per episode; the runner asks the agent for an action after every
observation until it returns None. Agents record why they stopped in `meta["end_reason"]`.
Policies know nothing of a domain beyond its Collector.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_pipeline.collect.base import Collector, ScriptedTask
from lwm.schema import Step, TrajectoryError, read_jsonl, validate


class Agent:
    task: ScriptedTask | None = None  # what the environment is set up for (reset(task))
    instruction: str = ""
    meta: dict
    max_steps: int | None = None      # None: the run's collect.max_steps

    def act(self, observation: str, steps: list[Step]) -> str | None:
        raise NotImplementedError

    def finish(self, steps: list[Step]) -> None:
        """Called once the episode ends, with every step taken."""


class Policy:
    name = ""
    version = 1

    def __init__(self, cfg, collector: Collector):
        self.cfg = cfg               # the full composed config
        self.collector = collector

    def size(self) -> int:
        """How many episodes a run holds."""
        return self.cfg.collect.num_trajectories

    def agent(self, index: int) -> Agent:
        raise NotImplementedError


# --- scripted ------------------------------------------------------------------------------

class _ScriptAgent(Agent):
    def __init__(self, task: ScriptedTask):
        self.task, self.instruction, self.actions = task, task.instruction, task.actions
        self.max_steps = len(task.actions)  # a script is never cut short
        self.meta = {"task_name": task.name, "params": task.params, "end_reason": "script_done"}

    def act(self, observation, steps):
        if len(steps) >= len(self.actions):
            return None
        # A step may depend on what is on screen (a web element's id exists only once the page
        # renders): such a step is a function of the current observation.
        action = self.actions[len(steps)]
        return action(observation) if callable(action) else action


class ScriptedPolicy(Policy):
    name = "scripted"

    def agent(self, index):
        return _ScriptAgent(self.collector.task(index, self.cfg.seed))


# --- openai --------------------------------------------------------------------------------

class _ChatAgent(Agent):
    def __init__(self, policy: "OpenAIPolicy", index: int):
        self.policy = policy
        # The model's task (and the environment's setup) comes from the scripted library, so
        # prompts vary like the scripts do.
        self.task = policy.collector.task(index, policy.cfg.seed)
        self.instruction = self.task.instruction
        self.meta = {"task_name": self.task.name, "params": self.task.params,
                     "model": policy.pcfg.model, "end_reason": "max_steps"}
        self.messages = [{"role": "system", "content": policy.collector.agent_prompt()}]

    def act(self, observation, steps):
        label = f"Task: {self.instruction}\n\nObservation:\n" if not steps else "Observation:\n"
        self.messages.append({"role": "user", "content": f"{label}```\n{observation}\n```"})
        p = self.policy.pcfg
        response = self.policy.client.chat.completions.create(
            model=p.model, messages=self.messages, temperature=p.temperature,
            max_tokens=p.max_tokens)
        reply = response.choices[0].message.content or ""
        action = self.policy.collector.parse_reply(reply)
        if action is None:
            self.meta.update(end_reason="unparseable_reply", last_reply=reply[:2000])
            return None
        if not action:
            self.meta["end_reason"] = "agent_done"
            return None
        self.messages.append({"role": "assistant", "content": action})
        return action


class OpenAIPolicy(Policy):
    name = "openai"

    def __init__(self, cfg, collector):
        super().__init__(cfg, collector)
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
    def __init__(self, rec: dict, collector: Collector):
        self.instruction = rec.get("task", "")
        self.actions = [s["action"] for s in rec["steps"]]
        self.recorded = [s["observation"] for s in rec["steps"]]
        self.collector = collector
        params = rec.get("meta", {}).get("params")
        if isinstance(params, dict):  # lets environments that set up per task rebuild the state
            self.task = ScriptedTask(rec.get("meta", {}).get("task_name", ""), self.instruction,
                                     self.actions, params)
        self.max_steps = len(self.actions)  # reproduce the record, whatever collect.max_steps says
        self.meta = {**rec.get("meta", {}), "replay_of": rec["id"], "replay_source": rec["source"],
                     "end_reason": "replay_done"}

    def act(self, observation, steps):
        if len(steps) >= len(self.actions):
            return None
        action = self.actions[len(steps)]
        self.collector.check_action(action)  # a malformed record raises before anything runs
        return action

    def finish(self, steps):
        # How much of the record the real environment reproduced (timestamps, hashes differ).
        same = sum(s.observation == o for s, o in zip(steps, self.recorded))
        self.meta["replay_match"] = round(same / max(len(self.recorded), 1), 4)


class ReplayPolicy(Policy):
    name = "replay"

    def __init__(self, cfg, collector):
        super().__init__(cfg, collector)
        path = Path(cfg.policy.replay_path)
        if not cfg.policy.replay_path or not path.is_file():
            raise FileNotFoundError(f"policy.replay_path '{cfg.policy.replay_path}' is not a file")
        self.path = path
        # Records stay raw here: a bad one is quarantined when its episode runs, not at start.
        # Only this collector's domain is replayed; records of other domains are left alone.
        self.records = [(n, r) for n, r in read_jsonl(path)
                        if isinstance(r, Exception) or not isinstance(r, dict)
                        or r.get("domain") == collector.domain]

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
        return _ReplayAgent(rec, self.collector)


POLICIES = {p.name: p for p in (ScriptedPolicy, OpenAIPolicy, ReplayPolicy)}


def make_policy(cfg, collector: Collector) -> Policy:
    if cfg.policy.name not in POLICIES:
        raise ValueError(f"unknown policy '{cfg.policy.name}' (known: {', '.join(POLICIES)})")
    return POLICIES[cfg.policy.name](cfg, collector)
