"""The terminal domain's collector: tmux in a sandbox, the scripted shell task library, and
keystroke-list actions for LLM agents."""

from __future__ import annotations

import json

from data_pipeline.collect.base import ActionError, Collector, ScriptedTask
from data_pipeline.collect.tasks import make_task
from data_pipeline.collect.terminal import TerminalEnv
from lwm.domains.base import json_values
from lwm.domains.terminal import TerminalDomain, parse_keystrokes

_AGENT_PROMPT = """You are an agent working in a Linux terminal: {description}, {width}x{height}.
Complete the task by sending keystrokes. Answer every turn with {action_format}
Reply with exactly one JSON list and nothing else; reply [] when the task is complete."""


def extract_keystrokes(reply: str) -> list[dict] | None:
    """The first JSON array in a model reply that is a keystroke list; None if there is none."""
    for value in json_values(reply, "["):
        try:
            return parse_keystrokes(json.dumps(value))
        except ActionError:
            continue
    return None


class TerminalCollector(Collector):
    domain = "terminal"

    def environment(self) -> TerminalEnv:
        return TerminalEnv(self.cfg)

    def task(self, index: int, seed: int) -> ScriptedTask:
        return make_task(index, seed)

    def agent_prompt(self) -> str:
        domain = TerminalDomain(self.cfg.width, self.cfg.height)
        return _AGENT_PROMPT.format(description=domain.description, width=self.cfg.width,
                                    height=self.cfg.height, action_format=domain.action_format)

    def parse_reply(self, reply: str) -> str | None:
        batches = extract_keystrokes(reply)
        if batches is None:
            return None
        return json.dumps(batches, ensure_ascii=False) if batches else ""
