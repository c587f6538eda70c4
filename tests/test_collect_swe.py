"""swe collection end to end: real sdists, real git, real pytest runs in the sandbox.

Needs bubblewrap, git, python3-pytest (apt) and the sdist cache (see SweEnvConfig.sdist_dir).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import collect_cfg

from data_pipeline.collect.base import ActionError
from data_pipeline.collect.runner import collect
from data_pipeline.collect.swe import SweCollector, SweEnv
from data_pipeline.collect.swe_tasks import TASKS, make_task
from lwm.config import CollectConfig
from lwm.domains.tools import extract_tool_call, parse_tool_call
from lwm.schema import load_trajectories, validate

SDISTS = CollectConfig().swe.sdist_dir


def make_cfg(n: int):
    return collect_cfg("swe", n)


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    out = tmp_path_factory.mktemp("swe")
    summary = collect(make_cfg(len(TASKS)), out)  # one episode of every task type
    assert summary["trajectories"] == len(TASKS) and summary["failures"] == 0
    for line in (out / "trajectories.jsonl").read_text().splitlines():
        validate(json.loads(line))
    trajs = load_trajectories(out / "trajectories.jsonl", domains={"swe"})
    return {t.meta["task_name"]: t for t in trajs}


def test_runner_records_real_tool_results(trajectories):
    assert set(trajectories) == set(TASKS)
    for t in trajectories.values():
        assert t.source == "collect.swe/scripted@1"
        assert [tool["name"] for tool in t.tools] == ["read_file", "write_file", "replace",
                                                      "list_directory", "search_file_content",
                                                      "run_shell_command"]
        assert t.initial_observation.startswith("Repository ")
        assert any(s.observation.startswith("Error: ") or (s.observation.startswith("Command:")
                   and "Exit Code: 0" not in s.observation) for s in t.steps), t.meta["task_name"]
        for s in t.steps:
            parse_tool_call(s.action)


def test_break_and_fix_runs_the_real_tests(trajectories):
    t = trajectories["break_and_fix"]
    fn, word = t.meta["params"]["function"], t.meta["params"]["word"]
    assert t.steps[1].observation.startswith("Replaced 1 occurrence")
    failing, passing = t.steps[2].observation, t.steps[5].observation
    assert f"RuntimeError: {word}: injected bug" in failing and "Exit Code: 1" in failing
    assert "passed" in passing and "Exit Code: 0" in passing
    assert fn in t.steps[0].observation


def test_sandbox_contains_file_tools_and_shell(trajectories):
    t = trajectories["sandbox_limits"]
    assert t.steps[0].observation.startswith("Error: path is outside the repository")
    assert t.steps[1].observation.startswith("Error: path is outside the repository")
    assert "user\n/home/user/repo\n/home/user" in t.steps[2].observation
    assert "cannot access '/root'" in t.steps[3].observation
    assert "cannot access '/work'" in t.steps[3].observation
    assert "URLError" in t.steps[4].observation  # no network


def test_symlinks_cannot_escape():
    cfg = CollectConfig()
    env = SweEnv(cfg)
    try:
        env.reset(make_task(0, 0, SDISTS))
        env.step(json.dumps({"name": "run_shell_command",
                             "arguments": {"command": "ln -s /etc/passwd leak && ln -s ../.. up"}}))
        assert env.step('{"name": "read_file", "arguments": {"path": "leak"}}').startswith(
            "Error: path is outside")
        assert env.step('{"name": "list_directory", "arguments": {"path": "up"}}').startswith(
            "Error: path is outside")
        assert env.step('{"name": "write_file", "arguments": {"path": "/home/user/x", '
                        '"content": ""}}').startswith("Error: path is outside")
        assert env.step('{"name": "nope", "arguments": {}}').startswith("Error: unknown tool")
        assert "missing required parameter 'path'" in env.step('{"name": "read_file"}')
        timeout = CollectConfig()
        timeout.swe.action_timeout_s = 0.5
        env.scfg = timeout.swe
        out = env.step('{"name": "run_shell_command", "arguments": {"command": "sleep 5"}}')
        assert "Exit Code: killed after timing out" in out
    finally:
        env.close()


def test_tasks_are_randomised_and_reproducible():
    assert len(TASKS) >= 8
    for i, name in enumerate(TASKS):
        task = make_task(i, 0, SDISTS)
        assert task.name == name and 4 <= len(task.actions) <= 8
        for action in task.actions:
            parse_tool_call(action)
    assert make_task(3, 7, SDISTS) == make_task(3, 7, SDISTS)
    assert make_task(2, 0, SDISTS).actions != make_task(2 + len(TASKS), 0, SDISTS).actions


def test_missing_sdists_name_the_command(tmp_path):
    cfg = CollectConfig()
    cfg.swe.sdist_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="pip download --no-binary :all: --no-deps six==1.17.0"):
        SweEnv(cfg)


def test_actions_and_replies():
    with pytest.raises(ActionError, match="not JSON"):
        parse_tool_call("ls -la")
    with pytest.raises(ActionError, match="JSON object"):
        parse_tool_call('["read_file"]')
    with pytest.raises(ActionError, match="arguments must be an object"):
        parse_tool_call('{"name": "read_file", "arguments": [1]}')
    assert parse_tool_call('{"name": "read_file", "arguments": "{\\"path\\": \\"a\\"}"}') == (
        "read_file", {"path": "a"})
    assert extract_tool_call('<think>{"name": "x"}</think>Sure: ```json\n{"name": "read_file", '
                             '"arguments": {"path": "six.py"}}\n```') == (
        '{"name": "read_file", "arguments": {"path": "six.py"}}')
    assert extract_tool_call('All good. {"name": "done"}') == ""
    assert extract_tool_call("I would read the file") is None
    collector = SweCollector(CollectConfig())
    assert "run_shell_command" in collector.agent_prompt()
