"""What a domain owns and the pipeline asks it: kind, action grammar (one tool-call parser for
every tool domain), error detection, the judge's paragraph, demo actions; and that a user
domain registered from config gets every hook."""

import json
import re

import pytest

import lwm.domains
from data_pipeline.curate.filters import clean_turns, drop_reason
from lwm.config import FilterConfig
from lwm.domains import (ActionError, Domain, ToolDomain, domain_names, get_domain,
                         register_extra)
from lwm.domains.terminal import TerminalDomain
from lwm.domains.tools import extract_tool_call, parse_tool_call
from lwm.schema import Step, Trajectory


class ToyDomain(Domain):
    """A user domain as a config would name it: only the formats, every hook from the base."""
    name = "toy"
    description = "a toy environment"
    action_format = "a word"
    observation_format = "a sentence"


class ToyToolDomain(ToolDomain):
    name = "toytool"
    description = "a toy tool server"
    action_format = '{"name": tool, "arguments": {...}}'
    observation_format = "the tool's text"
    error_pattern = re.compile(r"^E\d+")  # its own notion of an error
    judge_guide = "Judge the tool's text strictly."


class ToyGuiDomain(Domain):
    name = "toygui"
    kind = "gui"
    description = "a toy screen"
    action_format = "tap(x, y)"
    observation_format = "the screen"


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    """Domains a test registers are gone after it (other tests list every registered domain)."""
    monkeypatch.setattr(lwm.domains, "_REGISTRY", dict(lwm.domains._REGISTRY))


def traj(domain, steps, tools=(), initial="start"):
    return Trajectory(id="t", domain=domain, source="test", tools=list(tools),
                      initial_observation=initial, steps=[Step(a, o) for a, o in steps])


def call(name, **args):
    return json.dumps({"name": name, "arguments": args})


def test_kinds_are_declared_by_the_domains():
    kinds = {name: get_domain(name).kind for name in domain_names()}
    assert {n for n, k in kinds.items() if k == "tool"} >= {"swe", "search", "mcp"}
    assert {n for n, k in kinds.items() if k == "gui"} >= {"web", "os", "android"}
    assert kinds["terminal"] == "text"


def test_one_tool_call_parser_for_every_tool_domain():
    tool_domains = [get_domain(n) for n in domain_names() if get_domain(n).kind == "tool"]
    assert tool_domains and all(type(d).check_action is ToolDomain.check_action for d in tool_domains)
    for dom in tool_domains:
        dom.check_action('{"name": "read_file", "arguments": {"path": "a"}}')
        for bad in ("ls -la", '["read_file"]', '{"arguments": {}}', '{"name": "", "arguments": {}}',
                    '{"name": "x", "arguments": [1]}', '{"name": "x", "arguments": "{oops"}'):
            with pytest.raises(ActionError):
                dom.check_action(bad)
    assert parse_tool_call('{"name": "f", "arguments": "{\\"q\\": 1}"}') == ("f", {"q": 1})
    assert parse_tool_call('{"name": "f"}') == ("f", {})
    # The collectors' environments and policies use this very parser.
    import data_pipeline.collect.mcp as mcp
    import data_pipeline.collect.search as search
    import data_pipeline.collect.swe as swe
    assert swe.parse_tool_call is search.parse_tool_call is mcp.parse_tool_call is parse_tool_call


def test_tool_calls_pulled_out_of_replies():
    reply = ('<think>{"name": "x"}</think>Sure: ```json\n'
             '{"name": "read_file", "arguments": {"path": "a"}}\n```')
    assert extract_tool_call(reply) == '{"name": "read_file", "arguments": {"path": "a"}}'
    assert extract_tool_call('{"name": "other"} then {"name": "f", "arguments": "{\\"q\\": 1}"}',
                             tools={"f"}) == '{"name": "f", "arguments": {"q": 1}}'
    assert extract_tool_call('All good. {"name": "done"}') == ""
    assert extract_tool_call("no call here") is None


def test_action_grammars_of_the_other_domains():
    term, web, os_ = get_domain("terminal"), get_domain("web"), get_domain("os")
    term.check_action('[{"keystrokes": "ls\\n", "duration": 0.1}]')
    for bad in ("ls", '[{"keys": "ls"}]', '[{"keystrokes": "ls", "duration": -1}]'):
        assert term.is_malformed(bad)
    assert not web.is_malformed("fill('31', 'x')") and web.is_malformed("__import__('os')")
    assert not os_.is_malformed("pyautogui.click(1, 2)") and os_.is_malformed("  ")
    assert not get_domain("android").is_malformed("anything")  # no grammar: every action passes


def test_demo_actions_follow_each_domains_grammar():
    for name in domain_names():
        dom = get_domain(name)
        assert dom.demo_actions, name
        for action in dom.demo_actions:
            dom.check_action(action)


def test_error_detection_per_domain():
    base, term = Domain(), get_domain("terminal")
    for text in ("Error: unknown tool 'x'", "Traceback (most recent call last)", "HTTP 404",
                 "isError: true", "Permission denied"):
        assert base.is_error(text), text
    assert not base.is_error("user@sandbox:~$ ls\nnotes.txt")
    # The shell's own markers: case matters there ("error:" as tools print it, "No such file").
    assert term.is_error("cat: x: No such file or directory")
    assert term.is_error("bash: foo: command not found")
    assert not term.is_error("grep -c errors log.txt\n0")
    toy = ToyToolDomain()
    assert toy.is_error("E42 disk full") and not toy.is_error("no E42 here")
    # Terminal's verifier counts whether prediction and reference agree on failing.
    ref = "cat: x: No such file or directory\nuser@sandbox:~$"
    assert term.verify(ref, ref).details["error_match"] == 1.0
    assert term.verify("hello\nuser@sandbox:~$", ref).details["error_match"] == 0.0


def test_retry_cycles_use_the_domains_grammar_and_errors():
    toy = ToyToolDomain()
    t = traj("toytool", (("not a call", "E1 bad request"), (call("f"), "ok"), (call("f"), "ok")))
    assert clean_turns(t, FilterConfig(), toy)[1] == [False, True, True]
    # the generic error markers are not this domain's: no retry cycle
    t = traj("toytool", (("not a call", "Error: bad request"), (call("f"), "ok")))
    assert clean_turns(t, FilterConfig(), toy)[1] == [True, True]


def test_filters_ask_the_domains_kind():
    tools = [{"type": "function", "function": {"name": "f"}}]
    bad_call = traj("toytool", ((call("f"), "x"), (call("g"), "y")), tools)
    assert drop_reason(bad_call, FilterConfig(), ToyToolDomain()) == "undeclared tool"
    assert drop_reason(bad_call, FilterConfig(), ToyDomain()) is None  # not a tool domain
    # search's three tools are the engine's own: records need not declare them
    search = traj("search", ((call("web_search", query="x"), "r"), (call("dict_memory"), "m")))
    assert drop_reason(search, FilterConfig()) is None
    broken = traj("toygui", (("tap(1, 2)", "page crashed"), ("tap(3, 4)", "home")))
    assert drop_reason(broken, FilterConfig(), ToyGuiDomain()) == "gui environment failure"
    assert drop_reason(broken, FilterConfig(), ToyDomain()) is None
    same = traj("toygui", (("tap(1, 2)", "A"), ("tap(1, 2)", "A"), ("tap(3, 4)", "B")), initial="S")
    assert clean_turns(same, FilterConfig(), ToyGuiDomain())[1] == [True, False, True]
    assert clean_turns(same, FilterConfig(), ToyDomain())[1] == [True, True, True]


def test_user_domain_from_config_gets_every_hook():
    register_extra({"toy": "tests.test_domains:ToyDomain",
                    "toytool": "tests.test_domains:ToyToolDomain"})
    register_extra({"toy": "tests.test_domains:ToyDomain"})  # idempotent: every worker calls it
    toy = get_domain("toy")
    assert toy.kind == "text" and toy.demo_actions == () and toy.judge_paragraph() == ""
    assert not toy.is_malformed("whatever") and toy.is_error("Error: nope")
    assert toy.undeclared_tool(traj("toy", (("a", "b"),))) is None
    assert toy.check_format("a sentence") == 1.0 and 0 < toy.verify("a sentence", "a sentence").score
    assert get_domain("toytool").judge_paragraph() == "Judge the tool's text strictly."
    with pytest.raises(ValueError, match="is the domain 'toy'"):
        register_extra({"other": "tests.test_domains:ToyDomain"})


def test_judge_paragraph_comes_from_the_domain():
    for name in ("terminal", "swe", "search", "mcp", "web", "os", "android"):
        assert len(get_domain(name).judge_paragraph()) > 50, name
    assert "tmux" in get_domain("terminal").judge_paragraph()


def test_terminal_format_checks_the_shell_prompt():
    dom = TerminalDomain(width=100, height=24)
    waiting = "user@sandbox:~/work$ ls\nnotes.txt\nuser@sandbox:~/work$"
    running = "user@sandbox:~$ sleep 30"
    busy = "user@sandbox:~$ python3 long.py\nstep 1\nstep 2"
    no_prompt = "notes.txt\nreport.pdf"
    assert dom.check_format(waiting) == 1.0
    assert dom.check_format("root@box:/etc# ") == 1.0
    assert dom.check_format(busy) == dom.check_format(running) == 0.75  # a command still runs
    assert dom.check_format(no_prompt) == 0.5  # fits the screen, but no shell anywhere
    assert dom.check_format("") == 0.0
    assert dom.check_format("\n".join(["x"] * 30) + "\nuser@sandbox:~$") == 0.5  # taller than the screen
