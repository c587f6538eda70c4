"""End-to-end terminal collection: real sandboxes, real tmux, real shells.

Needs bubblewrap and tmux (CI: apt-get install bubblewrap tmux) and root; without them these
fail with the install hint instead of skipping.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_pipeline.collect.terminal_collector import extract_keystrokes
from data_pipeline.collect.runner import collect, episode_id
from data_pipeline.collect.tasks import TASKS, make_task
from data_pipeline.collect.base import ActionError
from data_pipeline.collect.terminal import TerminalEnv
from lwm.config import CollectConfig, LWMConfig
from lwm.domains.terminal import parse_keystrokes
from lwm.schema import load_trajectories, validate

N = 8  # covers notes_file (0), missing_things (4) and env_vars (7) of the task cycle
TASK_NAMES = list(TASKS)


def make_cfg(**collect) -> OmegaConf:
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.collect.num_trajectories = N
    cfg.collect.workers = 1
    for key, value in collect.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    out = tmp_path_factory.mktemp("scripted")
    summary = collect(make_cfg(**{"collect.workers": 4}), out)
    return out, summary


def by_index(path: Path) -> dict:
    return {t.meta["index"]: t for t in load_trajectories(path, domains={"terminal"})}


def test_scripted_trajectories_are_real(scripted):
    out, summary = scripted
    assert summary["trajectories"] == N and summary["failures"] == 0 and summary["steps"] > 3 * N
    assert json.loads((out / "metrics.json").read_text())["trajectories"] == N
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    for line in lines:
        validate(json.loads(line))
    trajs = by_index(out / "trajectories.jsonl")
    assert sorted(trajs) == list(range(N))
    notes = trajs[0]
    assert notes.meta["task_name"] == "notes_file" and notes.source == "collect.terminal/scripted@1"
    assert notes.initial_observation == "user@sandbox:~$"
    cat_n = notes.steps[2].observation
    for word in notes.meta["params"]["lines"]:     # the random words really came back
        assert word in cat_n
    errors = trajs[4]
    assert errors.meta["task_name"] == "missing_things"
    assert "No such file or directory" in errors.steps[0].observation
    assert "command not found" in errors.steps[3].observation
    assert errors.steps[4].observation.splitlines()[-2] == "127"
    for t in trajs.values():  # the screen size holds
        for s in t.steps:
            assert len(s.observation.splitlines()) <= 24
            assert all(len(line) <= 100 for line in s.observation.splitlines())


def test_tasks_are_randomised_and_reproducible():
    assert len(TASKS) >= 12
    for i, name in enumerate(TASK_NAMES):
        task = make_task(i, seed=0)
        assert task.name == name and 3 <= len(task.actions) <= 10
        for action in task.actions:
            parse_keystrokes(action)
    assert make_task(0, 0) == make_task(0, 0)
    assert make_task(0, 0).actions != make_task(len(TASKS), 0).actions


def test_action_parsing():
    with pytest.raises(ActionError, match="not JSON"):
        parse_keystrokes("ls -la")
    with pytest.raises(ActionError, match="keystrokes"):
        parse_keystrokes('[{"keys": "ls"}]')
    with pytest.raises(ActionError, match="duration"):
        parse_keystrokes('[{"keystrokes": "ls", "duration": -1}]')
    assert extract_keystrokes('<think>[maybe]</think>Sure:\n```json\n[{"keystrokes": "ls\\n", '
                              '"duration": 0.1}]\n```') == [{"keystrokes": "ls\n", "duration": 0.1}]
    assert extract_keystrokes("Done. []") == []
    assert extract_keystrokes("I would run ls") is None


def test_long_command_shows_partial_then_complete_output():
    env = TerminalEnv(CollectConfig(settle_s=0.05))
    try:
        env.reset()
        loop = 'for i in 1 2 3; do echo "tick $i"; sleep 0.4; done; echo "all $i"\n'
        partial = env.step(json.dumps([{"keystrokes": loop, "duration": 0.2}]))
        assert "tick 1" in partial and "all 3" not in partial
        done = env.step(json.dumps([{"keystrokes": "", "duration": 1.3}]))
        assert "tick 3" in done and "all 3" in done and done.endswith("user@sandbox:~$")
        interrupted = env.step(json.dumps([{"keystrokes": "sleep 30\n", "duration": 0.1},
                                           {"keystrokes": "C-c", "duration": 0}]))
        assert "^C" in interrupted and interrupted.endswith("$")
    finally:
        env.close()


def test_resume_after_a_partial_file(scripted, tmp_path):
    out, _ = scripted
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    target = tmp_path / "trajectories.jsonl"
    # Two complete lines and half of a third: what a kill mid-write leaves behind.
    target.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    kept = {json.loads(lines[0])["id"], json.loads(lines[1])["id"]}
    summary = collect(make_cfg(**{"collect.num_trajectories": 4}), tmp_path)
    assert summary["skipped_existing"] == 2 and summary["trajectories"] == 2
    trajs = load_trajectories(target)
    ids = [t.id for t in trajs]
    assert sorted(ids) == [episode_id("scripted", 0, i) for i in range(4)]
    assert kept <= set(ids)
    again = collect(make_cfg(**{"collect.num_trajectories": 4}), tmp_path)
    assert again["trajectories"] == 0 and again["skipped_existing"] == 4


def test_replay_reproduces_and_quarantines(scripted, tmp_path):
    out, _ = scripted
    env_vars = by_index(out / "trajectories.jsonl")[7]   # no timestamps or hashes on its screens
    assert env_vars.meta["task_name"] == "env_vars"
    record = json.loads(env_vars.to_json())
    bad = dict(record, id="bad-record", steps=[{"action": "ls -la", "observation": ""}])
    replay_in = tmp_path / "recorded.jsonl"
    replay_in.write_text(json.dumps(record) + "\n" + json.dumps(bad) + "\n{not json\n")
    cfg = make_cfg(**{"policy.name": "replay", "policy.replay_path": str(replay_in)})
    summary = collect(cfg, tmp_path / "out")
    assert summary["trajectories"] == 1 and summary["quarantined"] == 2
    replayed = load_trajectories(tmp_path / "out" / "trajectories.jsonl")[0]
    assert replayed.meta["replay_of"] == env_vars.id and replayed.task == env_vars.task
    assert replayed.source == "collect.terminal/replay@1"
    assert [s.observation for s in replayed.steps] == [s.observation for s in env_vars.steps]
    assert replayed.meta["replay_match"] == 1.0
    quarantined = [json.loads(l) for l in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert any("not JSON" in q["error"] for q in quarantined)      # the malformed action
    assert any("invalid JSON" in q["error"] for q in quarantined)  # the broken line


class _FakeChatServer(BaseHTTPRequestHandler):
    """A test double of an OpenAI-compatible endpoint: tests cannot reach a real one."""
    replies: list[str] = []
    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        content = type(self).replies[min(len(self.requests), len(self.replies)) - 1]
        data = json.dumps({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_policy_drives_an_episode(tmp_path):
    _FakeChatServer.replies = [
        'Let me look around first.\n[{"keystrokes": "echo hello-lwm\\n", "duration": 0.1}]',
        '```json\n[{"keystrokes": "ls /nope\\n", "duration": 0.1}]\n```',
        "I am not sure what to do next.",  # unparseable: the episode ends here
    ]
    _FakeChatServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = make_cfg(**{"collect.num_trajectories": 1, "policy.name": "openai",
                          "policy.model": "test-model",
                          "policy.base_url": f"http://127.0.0.1:{server.server_port}/v1"})
        summary = collect(cfg, tmp_path)
    finally:
        server.shutdown()
    assert summary["trajectories"] == 1
    traj = load_trajectories(tmp_path / "trajectories.jsonl")[0]
    assert [json.loads(s.action)[0]["keystrokes"] for s in traj.steps] == ["echo hello-lwm\n", "ls /nope\n"]
    assert "hello-lwm\nuser@sandbox:~$" in traj.steps[0].observation
    assert "No such file or directory" in traj.steps[1].observation
    assert traj.meta["end_reason"] == "unparseable_reply" and traj.meta["model"] == "test-model"
    first, last = _FakeChatServer.requests[0], _FakeChatServer.requests[-1]
    assert first["model"] == "test-model" and traj.task in first["messages"][1]["content"]
    assert "hello-lwm" in last["messages"][-1]["content"]   # the model saw the real screen


def test_a_crashing_episode_is_counted_not_fatal(tmp_path, monkeypatch):
    from data_pipeline.collect import terminal_collector
    from data_pipeline.sandbox import SandboxError

    class CrashOnce(TerminalEnv):
        crashed = False

        def step(self, action):
            if not CrashOnce.crashed:
                CrashOnce.crashed = True
                raise SandboxError("simulated sandbox crash")
            return super().step(action)

    monkeypatch.setattr(terminal_collector, "TerminalEnv", CrashOnce)
    summary = collect(make_cfg(**{"collect.num_trajectories": 2}), tmp_path)
    assert summary["failures"] == 1 and summary["trajectories"] == 1
    assert len(load_trajectories(tmp_path / "trajectories.jsonl")) == 1
