"""OpenAI-style chat logs with tool calls into trajectories.

One record: {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...,
"tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}],
"tool_call_id": ...}], "tools": [{"type": "function", "function": {...}}]}. Each assistant tool
call is an action {"name", "arguments"}; the tool message answering its id is the observation;
the first user message is the task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from lwm.schema import MALFORMED, Step, Trajectory

from data_pipeline.ingest.common import Reject, jsonl_records, malformed


def _text(content) -> str:
    """Message content as text: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise TypeError(f"content is {type(content).__name__}")


def _tool(defn: dict) -> dict:
    """{"type": "function", "function": {...}} -> the function's own definition."""
    return defn["function"] if defn.get("type") == "function" and "function" in defn else defn


def convert(path: Path, cfg) -> Iterator[Trajectory | Reject]:
    domain = cfg.ingest.domain or "mcp"
    for where, lineno, rec in jsonl_records(path):
        if isinstance(rec, Reject):
            yield rec
            continue
        try:
            traj = _trajectory(rec, domain, where, lineno)
        except _Bad as e:
            traj = Reject(where, lineno, e.field, e.reason)
        except MALFORMED as e:
            traj = malformed(where, lineno, e)
        yield traj


class _Bad(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _trajectory(rec, domain: str, where: str, lineno: int) -> Trajectory:
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        raise _Bad("messages", "expected an object with a list of messages")
    messages = rec["messages"]
    results: dict[str, str] = {}
    for i, msg in enumerate(messages):
        if isinstance(msg, dict) and msg.get("role") == "tool":
            try:
                results[str(msg.get("tool_call_id"))] = _text(msg.get("content"))
            except TypeError as e:
                raise _Bad(f"messages[{i}].content", str(e)) from None
    task, system, steps = "", "", []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _Bad(f"messages[{i}]", "expected an object")
        role = msg.get("role")
        if role == "user" and not task:
            task = _text(msg.get("content"))
        elif role == "system" and not system:
            system = _text(msg.get("content"))
        for j, call in enumerate((msg.get("tool_calls") or []) if role == "assistant" else []):
            at = f"messages[{i}].tool_calls[{j}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _Bad(f"{at}.function", "missing or without a name")
            args = fn.get("arguments", "{}")
            try:
                args = json.loads(args) if isinstance(args, str) else args
            except json.JSONDecodeError as e:
                raise _Bad(f"{at}.function.arguments", f"not JSON ({e.msg})") from None
            if str(call.get("id")) not in results:
                raise _Bad(f"{at}.id", f"no tool message answers call {call.get('id')!r}")
            action = json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)
            steps.append(Step(action, results[str(call["id"])]))
    if not steps:
        raise _Bad("messages", "no assistant tool call with a tool result")
    tools = rec.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _Bad("tools", "expected a list of tool definitions")
    return Trajectory(id=str(rec.get("id") or f"{Path(where).stem}-{lineno}"), domain=domain,
                      source="ingest.openai_chat", task=task, tools=[_tool(t) for t in tools],
                      steps=steps, meta={"system": system} if system else {})
