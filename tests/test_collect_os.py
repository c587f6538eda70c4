"""The os collector on a real desktop: Xvfb, D-Bus, AT-SPI and mousepad in a sandbox.

Needs (CI): apt-get install xvfb dbus at-spi2-core python3-pyatspi python3-tk mousepad
bubblewrap; pip install --target /usr/local/lib/lwm-pyautogui pyautogui==0.9.54; and root.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from data_pipeline.collect.base import ActionError
from data_pipeline.collect.os_desktop import OsCollector, OsEnv
from data_pipeline.collect.os_tasks import TASKS, make_task
from data_pipeline.collect.runner import collect
from lwm.config import CollectConfig, LWMConfig
from lwm.domains.registered import OsDomain
from lwm.schema import load_trajectories

HEADER = "tag\tname\ttext\tposition (top-left x&y)\tsize (w&h)"


@pytest.fixture(scope="module")
def env():
    env = OsEnv(OmegaConf.structured(CollectConfig))
    yield env
    env.close()


def test_scripted_episode_with_dialog_and_error(env):
    # write_and_save_as: typing, a misspelt call, the Save As dialog, a saved file
    task = make_task(0, seed=0)
    first = env.reset(task)
    assert first.splitlines()[0] == HEADER
    assert "frame\tUntitled 1 - Mousepad" in first
    observations = [env.step(action) for action in task.actions]
    typed = task.actions[1].split("'")[1].split("\\n")[0]
    assert typed in observations[1]                              # the text area's content
    assert any("Traceback (most recent call last)" in o for o in observations)
    dialog = observations[task.actions.index("pyautogui.hotkey('ctrl', 'shift', 's')")]
    assert "file chooser\tSave As" in dialog and "push button\tSave" in dialog
    name = task.instruction.split("~/")[1].rstrip(".")
    assert f"~/{name} - Mousepad" in observations[-1]           # saved: the title changed
    assert "-2147483648" not in "".join(observations)           # closed menus are filtered


def test_errors_are_observations_and_the_sandbox_holds(env):
    env.reset(make_task(9, seed=0))
    obs = env.step("undefined_helper()")
    assert obs.startswith(HEADER) and obs.rstrip().endswith(
        "NameError: name 'undefined_helper' is not defined")
    assert "SyntaxError" in env.step("pyautogui.click(10, 12")
    # Agent code runs inside the sandbox: no host files, no network, the episode's $HOME only.
    assert "FileNotFoundError" in env.step("open('/work/main/README.md').read()")
    assert "OSError" in env.step(
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)")
    assert "AssertionError" not in env.step(
        "import os\nassert os.getuid() == 1000 and os.environ['HOME'] == '/home/user'")
    env.step("open('/home/user/left_behind.txt', 'w').write('x')")
    env.reset(make_task(9, seed=0))   # a new episode: $HOME is wiped
    assert "FileNotFoundError" in env.step("open('/home/user/left_behind.txt')")


def test_actions_and_replies():
    for bad in ("", "   ", None):
        with pytest.raises(ActionError):
            OsDomain().check_action(bad)
    collector = OsCollector(OmegaConf.structured(CollectConfig))
    assert collector.parse_reply("ok\n```python\npyautogui.click(1, 2)\n```") == "pyautogui.click(1, 2)"
    assert collector.parse_reply("<think>x</think>DONE") == ""
    assert collector.parse_reply("WAIT") == "WAIT"
    assert collector.parse_reply("no code here") is None
    assert "pyautogui" in collector.agent_prompt()
    tasks = [make_task(i, 3) for i in range(len(TASKS))]
    assert len({t.name for t in tasks}) == len(TASKS) >= 8
    assert make_task(0, 3).actions != make_task(0, 4).actions   # parameters differ by seed


def test_runner_collects_os(tmp_path):
    cfg = OmegaConf.structured(LWMConfig)
    cfg.data.domains = ["os"]
    cfg.wandb.mode = "disabled"
    cfg.collect.workers = 1
    cfg.collect.num_trajectories = 2
    summary = collect(cfg, tmp_path)
    trajs = load_trajectories(tmp_path / "trajectories.jsonl", domains={"os"})
    assert len(trajs) == 2, summary
    for t in trajs:
        assert t.domain == "os" and t.initial_observation.startswith(HEADER)
        assert any("Traceback" in s.observation for s in t.steps)
