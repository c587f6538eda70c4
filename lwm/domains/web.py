"""The web domain: BrowserGym action strings on a page's accessibility tree."""

from __future__ import annotations

import ast

from lwm.domains.base import ActionError, Domain

# name -> the literal types of its positional arguments (trailing ones optional where noted)
ACTIONS = {"click": (str,), "dblclick": (str,), "hover": (str,), "fill": (str, str),
           "clear": (str,), "select_option": (str, (str, list)), "press": (str, str),
           "focus": (str,), "goto": (str,), "scroll": ((int, float), (int, float)),
           "go_back": (), "go_forward": (), "noop": ((int, float),)}
_OPTIONAL_LAST = {"noop"}


def parse_browser_action(action: str) -> tuple[str, list]:
    """A BrowserGym action call: its name and literal arguments (parsed with `ast`, never
    evaluated). Raises ActionError."""
    try:
        node = ast.parse(action.strip(), mode="eval").body
    except (SyntaxError, ValueError, AttributeError):
        raise ActionError(f"not a BrowserGym action call: {str(action)[:200]!r}") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.keywords:
        raise ActionError(f"expected one call like click('12'), got {action[:200]!r}")
    name = node.func.id
    if name not in ACTIONS:
        raise ActionError(f"unknown action '{name}' (actions: {', '.join(ACTIONS)})")
    try:
        args = [ast.literal_eval(a) for a in node.args]
    except ValueError:
        raise ActionError(f"arguments must be literals: {action[:200]!r}") from None
    types = ACTIONS[name]
    if not (len(types) - (name in _OPTIONAL_LAST) <= len(args) <= len(types)):
        raise ActionError(f"{name} takes {len(types)} argument(s), got {len(args)}: {action[:200]!r}")
    for arg, typ in zip(args, types):
        if isinstance(arg, bool) or not isinstance(arg, typ):
            raise ActionError(f"{name}: bad argument {arg!r} in {action[:200]!r}")
    return name, args


class WebDomain(Domain):
    name = "web"
    kind = "gui"
    description = "a web browser showing a web application"
    action_format = ("one BrowserGym action such as click('12'), fill('31', 'text'), goto('url'), "
                     "scroll(0, 200), go_back(), select_option('7', 'value')")
    observation_format = "the page's accessibility tree, one node per line with its [bid], role and name"
    demo_actions = ("click('12')", "fill('31', 'bug in login form')")

    def check_action(self, action: str) -> None:
        parse_browser_action(action)

    def check_format(self, observation: str) -> float:
        lines = [l for l in observation.splitlines() if l.strip()]
        return sum("[" in l for l in lines) / len(lines) if lines else 0.0
