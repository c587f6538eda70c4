"""The web collector end to end: Debian's chromium through Playwright on a real Trac 1.6
project served on 127.0.0.1, fresh per episode.

Needs apt chromium, pip playwright, and Trac in its venv:
python3 -m venv ~/.cache/lwm/web/venv && ~/.cache/lwm/web/venv/bin/pip install Trac==1.6
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
from omegaconf import OmegaConf

from data_pipeline.collect.base import ActionError
from data_pipeline.collect.runner import collect
from data_pipeline.collect.web import WebCollector
from data_pipeline.collect.web_tasks import TASKS
from lwm.config import LWMConfig
from lwm.domains.web import WebDomain, parse_browser_action
from lwm.schema import Step, Trajectory, load_trajectories, validate


def make_cfg():
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.data.domains = ["web"]
    cfg.collect.workers = 1
    cfg.collect.num_trajectories = 2
    return cfg


@pytest.fixture(scope="module")
def collector_env():
    collector = WebCollector(make_cfg().collect)
    env = collector.environment()
    yield collector, env
    env.shutdown()


def run(collector, env, index, seed=0):
    task = collector.task(index, seed)
    first = env.reset(task)
    steps = []
    for i in range(len(task.actions)):
        action = task.actions[i]
        steps.append(Step(action, env.step(action)))
    return task, first, steps


def test_create_ticket_through_the_form(collector_env):
    collector, env = collector_env
    task, first, steps = run(collector, env, list(TASKS).index("create_ticket"))
    assert first.startswith("URL: http://127.0.0.1:") and "[" in first
    assert WebDomain().check_format(first) > 0.5
    assert all(parse_browser_action(s.action) for s in steps)
    assert steps[-2].observation.startswith("Error: Locator.fill")          # typing into a link
    created = steps[-1].observation
    assert "/ticket/7" in created.splitlines()[0]                           # 6 seeded tickets
    assert task.params["summary"] in created
    traj = Trajectory(id="w", domain="web", source="test", steps=steps, task=task.instruction,
                      initial_observation=first, meta={"params": task.params})
    validate(asdict(traj))
    env.close()
    # the next episode starts from the template again: ticket 7 is gone
    env.reset()
    port = env.app.port
    assert "Error" in env.step(f"goto('http://127.0.0.1:{port}/ticket/7')").splitlines()[1]
    env.close()


def test_errors_history_and_network(collector_env):
    collector, env = collector_env
    task, first, steps = run(collector, env, list(TASKS).index("navigate_history"))
    urls = [s.observation.splitlines()[0] for s in steps]
    assert urls[2] == urls[0] and urls[3] == urls[1]                        # go_back, go_forward
    blocked = steps[5].observation
    assert blocked.startswith("Error: Page.goto: net::ERR_BLOCKED_BY_CLIENT")  # only 127.0.0.1
    env.close()


def test_parse_actions_and_replies(collector_env):
    collector, _ = collector_env
    assert parse_browser_action("fill('31', \"it's\")") == ("fill", ["31", "it's"])
    assert parse_browser_action("scroll(0, 200)") == ("scroll", [0, 200])
    assert parse_browser_action("select_option('7', ['a', 'b'])")[1] == ["7", ["a", "b"]]
    for bad in ("click(12)", "__import__('os').system('x')", "click('1'); click('2')",
                "eval('1')", "fill('1')", "click(bid='1')", "goto(open('/etc/passwd'))"):
        with pytest.raises(ActionError):
            collector.check_action(bad)
    assert collector.parse_reply("I'll open it.\n```\nclick('42')\n```") == "click('42')"
    assert collector.parse_reply("DONE") == ""
    assert collector.parse_reply("no idea") is None
    assert "click('12')" in collector.agent_prompt()


def test_generic_runner(tmp_path):
    summary = collect(make_cfg(), tmp_path)
    assert summary["trajectories"] == 2 and summary["failures"] == 0
    trajs = load_trajectories(tmp_path / "trajectories.jsonl", domains={"web"})
    for t in trajs:
        assert any(s.observation.startswith("Error:") for s in t.steps)
        assert all("[" in s.observation for s in t.steps)
