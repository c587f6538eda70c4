"""mcp collection end to end: real MCP servers (npm and PyPI) over stdio in the sandbox.

Needs bubblewrap, git, node/npm with @modelcontextprotocol/server-{filesystem,memory,everything}
installed globally, and a venv of the system Python with mcp-server-git and mcp-server-time
(see McpEnvConfig and scripts/install.sh).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import collect_cfg

from data_pipeline.collect.base import ActionError
from data_pipeline.collect.mcp import ERROR_LINE, McpCollector, McpEnv
from data_pipeline.collect.mcp_tasks import TASKS, make_task
from data_pipeline.collect.runner import collect
from data_pipeline.sandbox import SandboxError
from lwm.config import CollectConfig
from lwm.schema import load_trajectories, validate


def make_cfg(n: int, **extra):
    return collect_cfg("mcp", n, **extra)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    out = tmp_path_factory.mktemp("mcp")
    summary = collect(make_cfg(len(TASKS)), out)  # one episode of every task type
    assert summary["trajectories"] == len(TASKS) and summary["failures"] == 0
    for line in (out / "trajectories.jsonl").read_text().splitlines():
        validate(json.loads(line))
    return out, {t.meta["task_name"]: t for t in
                 load_trajectories(out / "trajectories.jsonl", domains={"mcp"})}


def test_runner_records_real_server_results(scripted):
    _, trajs = scripted
    assert set(trajs) == set(TASKS)
    for t in trajs.values():
        assert t.source == "collect.mcp/scripted@1"
        assert t.initial_observation.startswith("Connected MCP servers:")
        assert t.tools and all({"name", "description", "inputSchema"} <= set(tool) for tool in t.tools)
        declared = {tool["name"] for tool in t.tools}
        assert any(s.observation.startswith(ERROR_LINE + "\n") for s in t.steps), t.meta["task_name"]
        for s in t.steps:
            action = json.loads(s.action)
            assert action["name"] in declared or action["name"].endswith("-tool")
    fs = trajs["fs_explore"]
    name = json.loads(fs.steps[3].action)["arguments"]["path"].rsplit("/", 1)[1]
    assert fs.steps[3].observation == fs.meta["params"]["files"][name]  # the seeded file, read back
    assert "ENOENT" in fs.steps[4].observation
    assert "Invalid timezone" in trajs["time_zones"].steps[3].observation
    assert "Changes committed successfully" in trajs["git_commit_flow"].steps[5].observation
    assert trajs["everything_tools"].steps[1].observation.startswith("The sum of")
    assert "[image image/png," in trajs["everything_tools"].steps[3].observation


def test_servers_are_confined(scripted):
    _, trajs = scripted
    assert "Access denied - path outside allowed directories" in trajs["fs_organise"].steps[5].observation
    env = McpEnv(CollectConfig())
    try:
        env.reset(make_task(0, 0, name="everything_tools"))
        sandbox_dir = env.sandbox.dir
        env_vars = env.step('{"name": "get-env", "arguments": {}}')
        assert '"HOME": "/home/user"' in env_vars and "pyenv" not in env_vars  # the sandbox's env
        assert "/work" not in env_vars
    finally:
        env.close()
    assert not sandbox_dir.exists()  # wiped, servers killed with the cgroup


def test_replay_reproduces_a_git_episode(scripted, tmp_path):
    out, trajs = scripted
    record = json.loads(trajs["git_inspect"].to_json())
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text(json.dumps(record) + "\n")
    summary = collect(make_cfg(1, **{"policy.name": "replay", "policy.replay_path": str(recorded)}),
                      tmp_path / "out")
    assert summary["trajectories"] == 1
    replayed = load_trajectories(tmp_path / "out" / "trajectories.jsonl")[0]
    assert replayed.meta["replay_match"] == 1.0  # seeded commits have fixed dates, so fixed hashes


def test_tasks_are_randomised_and_reproducible():
    assert len(TASKS) >= 8
    servers = set()
    for i, name in enumerate(TASKS):
        task = make_task(i, 0)
        assert task.name == name and 4 <= len(task.actions) <= 9
        servers |= set(task.params["servers"])
    assert servers == {"filesystem", "git", "time", "memory", "everything"}
    assert make_task(5, 3) == make_task(5, 3)
    assert make_task(1, 0).actions != make_task(1 + len(TASKS), 0).actions


def test_missing_servers_name_the_install_command():
    cfg = CollectConfig()
    cfg.mcp.python_bin = "/usr/local/lib/no-such-venv/bin"
    with pytest.raises(SandboxError, match="pip install mcp-server-git mcp-server-time"):
        McpEnv(cfg)


def test_actions_replies_and_prompt():
    collector = McpCollector(CollectConfig())
    with pytest.raises(ActionError, match="not JSON"):
        collector.check_action("echo hi")
    with pytest.raises(ActionError, match="JSON object"):
        collector.check_action('{"arguments": {}}')
    assert collector.parse_reply('Calling: {"name": "echo", "arguments": {"message": "x"}}') == (
        '{"name": "echo", "arguments": {"message": "x"}}')
    assert collector.parse_reply('{"name": "done"}') == ""
    assert collector.parse_reply("no tool call here") is None
    prompt = collector.agent_prompt()
    for tool in ("read_text_file", "git_status", "convert_time", "create_entities", "get-sum"):
        assert f'"name": "{tool}"' in prompt
