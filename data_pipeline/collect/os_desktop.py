"""The os domain's collector: a real desktop app (mousepad) under Xvfb, observed through its
AT-SPI accessibility tree and driven by pyautogui code, as in OSWorld.

Everything of an episode runs in one sandbox (data_pipeline/sandbox.py): Xvfb, a private D-Bus
session bus (which starts the AT-SPI bus), the app, the tree dumper and every action, which runs
in its own child process. os_server.py is that in-sandbox side; this module is the host side.

Observation: the linearised tree, one visible node per line (tag, name, text, position, size).
When the action's code raises, the observation is the tree after it, a blank line, then the
Python traceback of the action (only the action's own frames): the screen still changed as far
as the code got, and the agent sees the error as it would in a REPL.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from data_pipeline.collect.base import Collector, Environment, ScriptedTask
from data_pipeline.collect.os_tasks import make_task
from data_pipeline.sandbox import HOME, RUN_DIR, Sandbox, SandboxError, require_binary
from lwm.config import SandboxConfig
from lwm.domains.base import without_reasoning
from lwm.domains.registered import OsDomain

_SERVER = Path(__file__).with_name("os_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"     # Debian's, where python3-pyatspi lives
WAIT, DONE, FAIL = "WAIT", "DONE", "FAIL"   # OSWorld's special actions
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)

_AGENT_PROMPT = """You control {description}: a {width}x{height} screen showing {app}, with no window manager (windows open at 0,0).
Each turn you see the accessibility tree: {observation_format}.
Answer with {action_format}, in one ```python block. Click a widget at the centre of its position and size.
Reply WAIT to wait, DONE when the task is complete, FAIL if it cannot be done."""


class OsEnv(Environment):
    """reset() -> the app's first tree; step(pyautogui code) -> the tree after it; close()."""

    tools: list[dict] = []

    def __init__(self, cfg):
        self.cfg, self.os = cfg, cfg.os
        self.sandbox: Sandbox | None = None
        self.server: subprocess.Popen | None = None
        for binary, package in (("Xvfb", "xvfb"), ("dbus-daemon", "dbus"),
                                (self.os.app, self.os.app), ("python3", "python3")):
            require_binary(binary, package)
        if not Path(self.os.pyautogui_path, "pyautogui").is_dir():
            raise SandboxError(f"pyautogui not found in {self.os.pyautogui_path}: pip install "
                               f"--target {self.os.pyautogui_path} pyautogui==0.9.54")

    # --- the episode ---------------------------------------------------------------------
    def reset(self, task: ScriptedTask | None = None) -> str:
        self.close()
        try:
            return self._start(task)
        except BaseException:
            self.close()
            raise

    def _start(self, task: ScriptedTask | None) -> str:
        self.sandbox = Sandbox(_sandbox_cfg(self.cfg.sandbox, self.os))
        self.sandbox.start()
        etc = self.sandbox.dir / "etc"   # the sandbox's /etc: GTK needs fonts, D-Bus an id
        if Path("/etc/fonts").is_dir():
            shutil.copytree("/etc/fonts", etc / "fonts")
        (etc / "machine-id").write_text(self.sandbox.name.encode().hex()[:32].ljust(32, "0") + "\n")
        shutil.copy(_SERVER, self.sandbox.run_dir / "os_server.py")
        params = task.params if task else {}
        for rel, content in params.get("files", {}).items():   # the task's starting files
            path = self.sandbox.home / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        argv = [self.os.app] + ([f"{HOME}/{params['open']}"] if params.get("open") else [])
        self.server = self.sandbox.popen(
            [SYSTEM_PYTHON, f"{RUN_DIR}/os_server.py"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reply = self._call({"op": "start", "argv": argv, "width": self.os.screen_width,
                            "height": self.os.screen_height, "timeout": self.os.start_timeout_s,
                            "settle_s": self.os.settle_s, "max_nodes": self.os.max_nodes},
                           self.os.start_timeout_s + 10)
        return reply["tree"]

    def step(self, action: str) -> str:
        if self.server is None:
            raise SandboxError("step() before reset()")
        OsDomain().check_action(action)
        if action.strip() == WAIT:
            action = "import time\ntime.sleep(1)"
        elif action.strip() in (DONE, FAIL):
            action = "pass"
        reply = self._call({"op": "step", "code": action, "timeout": self.os.action_timeout_s,
                            "pause_s": self.os.pause_s, "settle_s": self.os.settle_s,
                            "max_nodes": self.os.max_nodes,
                            "pyautogui_path": self.os.pyautogui_path},
                           self.os.action_timeout_s + 30)
        return f"{reply['tree']}\n\n{reply['error']}" if reply["error"] else reply["tree"]

    def _call(self, request: dict, timeout: float) -> dict:
        """One request to the in-sandbox server; its death or silence fails the episode."""
        try:
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise SandboxError(f"the desktop server is gone: {e}; {self._logs()}") from None
        ready, _, _ = select.select([self.server.stdout], [], [], timeout)
        line = self.server.stdout.readline() if ready else ""
        if not line:
            raise SandboxError(f"the desktop server did not answer {request['op']!r} in "
                               f"{timeout}s; {self._logs()}")
        reply = json.loads(line)
        if "fatal" in reply:
            raise SandboxError(f"desktop: {reply['fatal']}; {self._logs()}")
        return reply

    def _logs(self) -> str:
        """The tails of the in-sandbox programs' logs, for a failure message."""
        if self.sandbox is None or self.sandbox.dir is None:
            return ""
        out = []
        for log in sorted(self.sandbox.run_dir.glob("*.log")):
            tail = log.read_text(errors="replace").strip()[-400:]
            if tail:
                out.append(f"[{log.name}] {tail}")
        if self.server is not None and self.server.poll() is not None:
            out.append(f"[server] {self.server.stderr.read()[-800:]}")
        return " ".join(out)

    def close(self) -> None:
        # The sandbox's cgroup kill ends Xvfb, D-Bus, the app and any action still running;
        # its tmpfs held $HOME, so nothing of the episode survives.
        if self.sandbox is not None:
            self.sandbox.close()
        self.sandbox = self.server = None


def _sandbox_cfg(sandbox, os_cfg) -> SandboxConfig:
    """The run's sandbox settings, with the room a GTK desktop needs."""
    fields = OmegaConf.to_container(sandbox, resolve=True) if OmegaConf.is_config(sandbox) \
        else asdict(sandbox)
    fields["memory_mb"] = max(fields["memory_mb"], os_cfg.memory_mb)
    fields["disk_mb"] = max(fields["disk_mb"], os_cfg.disk_mb)
    return SandboxConfig(**fields)


class OsCollector(Collector):
    domain = "os"

    def environment(self) -> OsEnv:
        return OsEnv(self.cfg)

    def task(self, index: int, seed: int) -> ScriptedTask:
        return make_task(index, seed)

    def agent_prompt(self) -> str:
        d = OsDomain()
        return _AGENT_PROMPT.format(description=d.description, width=self.cfg.os.screen_width,
                                    height=self.cfg.os.screen_height, app=self.cfg.os.app,
                                    observation_format=d.observation_format,
                                    action_format=d.action_format)

    def parse_reply(self, reply: str) -> str | None:
        text = without_reasoning(reply).strip()
        if text.endswith(DONE) or text.endswith(FAIL):
            return ""
        if text.endswith(WAIT):
            return WAIT
        blocks = _CODE_BLOCK.findall(text)
        code = blocks[-1].strip() if blocks else ""
        return code or None
