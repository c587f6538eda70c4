"""Tool domains: actions are JSON tool calls {"name": tool, "arguments": {...}}.

One grammar for every tool domain (swe, search, mcp and user tool domains): the collectors'
environments parse calls with it, their LLM policies pull calls out of replies with it, and
prepare and the filters ask it whether an action is well formed and which tool it calls.
"""

from __future__ import annotations

import json

from lwm.domains.base import ActionError, Domain, json_values
from lwm.schema import Trajectory

DONE = "done"  # {"name": "done"}: the agent says the task is complete


def parse_tool_call(action: str) -> tuple[str, dict]:
    """A tool call's name and arguments; ActionError if `action` is not one. OpenAI-style
    arguments given as a JSON string are decoded."""
    try:
        call = json.loads(action)
    except (json.JSONDecodeError, TypeError) as e:
        raise ActionError(f"action is not JSON ({e}): {str(action)[:200]!r}") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise ActionError(f'action must be a JSON object {{"name": tool, "arguments": {{...}}}}: '
                          f"{str(action)[:200]!r}")
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ActionError(f"tool call arguments are not JSON: {args[:200]!r}") from None
    if not isinstance(args, dict):
        raise ActionError(f"tool call arguments must be an object, got {type(args).__name__}")
    return call["name"], args


def extract_tool_call(reply: str, tools=None) -> str | None:
    """The first tool call in a model reply (of a tool in `tools`, when given), as compact JSON;
    '' for {"name": "done"}; None when the reply holds neither."""
    for value in json_values(reply, "{"):
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            continue
        if value["name"] == DONE:
            return ""
        if tools is not None and value["name"] not in tools:
            continue
        try:
            name, args = parse_tool_call(json.dumps(value))
        except ActionError:
            continue
        return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return None


def called_tool(action: str) -> str | None:
    """The tool an action calls ({"name": ...} or OpenAI's {"function": {"name": ...}}), or None."""
    try:
        call = json.loads(action)
    except (json.JSONDecodeError, TypeError):
        return None
    return _name(call)


def _name(obj) -> str | None:
    """The "name" of a call or tool definition, plain or under OpenAI's "function"; None when
    there is none (anything of another shape, a "function" that is a string included)."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not name and isinstance(obj.get("function"), dict):
        name = obj["function"].get("name")
    return name if isinstance(name, str) else None


def declared_tools(traj: Trajectory) -> set[str]:
    """The tool names a record declares (plain or OpenAI-style definitions)."""
    names = set()
    for tool in traj.tools:
        name = _name(tool)
        if name:
            names.add(name)
    return names


class ToolDomain(Domain):
    """A domain whose actions are JSON tool calls."""

    kind = "tool"
    # Records declare the tools their calls may use (a call to any other is filtered out as an
    # invented tool). False where the domain's tools are its own, fixed set.
    tools_declared: bool = True

    def check_action(self, action: str) -> None:
        parse_tool_call(action)

    def undeclared_tool(self, traj: Trajectory) -> str | None:
        """The first tool a step calls that the record does not declare, or None."""
        if not self.tools_declared:
            return None
        declared = declared_tools(traj)
        for step in traj.steps:
            name = called_tool(step.action)
            if name is not None and name not in declared:
                return name
        return None
