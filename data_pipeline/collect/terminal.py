"""The terminal environment: bash in a tmux pane inside a per-episode sandbox.

The tmux server runs inside the sandbox; its socket sits in the sandbox's /run/lwm, which the
host also sees, so the host talks to it with one tmux control-mode client (`tmux -C`). Control
mode avoids a process per send-keys/capture-pane and reports pane output as it happens, which
is how "the screen stopped changing" is detected without polling.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time

from data_pipeline.collect.base import Environment, ScriptedTask
from data_pipeline.sandbox import RUN_DIR, Sandbox, SandboxError, require_binary
from lwm.config import CollectConfig
from lwm.domains.terminal import parse_keystrokes

SESSION = "main"
_KEY_NAME = re.compile(
    r"^(?:[CMS]-)*(?:Enter|Escape|Tab|BTab|BSpace|Space|Up|Down|Left|Right|Home|End|IC|DC|"
    r"PageUp|PageDown|PPage|NPage|F[1-9]|F1[0-2])$|^(?:[CMS]-)+\S$")
_TMUX_CONF = "\n".join([
    "set -g status off",            # the observation is the pane; no status line or clock
    "set -g default-terminal xterm",
    "set -g history-limit 2000",
    "set -g remain-on-exit on",     # `exit` leaves the last screen instead of ending the server
    "set -s escape-time 0",
]) + "\n"


class EnvironmentClosed(RuntimeError):
    pass


def _quote(text: str) -> str:
    """Quote for tmux's command parser: single quotes, `'` written as '\\''."""
    return "'" + text.replace("'", "'\\''") + "'"


class _ControlClient:
    """A `tmux -C attach` client: commands in, %begin/%end replies and %output events out."""

    def __init__(self, socket_path: str):
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        self.proc = subprocess.Popen(
            ["tmux", "-S", socket_path, "-C", "attach-session", "-t", SESSION],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=env)
        self.replies: queue.Queue = queue.Queue()
        self.last_output = time.monotonic()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        block, end = None, None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if block is not None:
                # A block ends with %end/%error carrying its %begin's time and number; a screen
                # line would have to guess both to be taken for the end.
                if line.startswith(("%end ", "%error ")) and line.split(" ", 1)[1] == end:
                    if int(end.split()[2]) & 1:  # flag 1: a reply to one of our commands
                        self.replies.put((line.startswith("%end"), block))
                    block = None
                else:
                    block.append(line)
            elif line.startswith("%begin "):
                block, end = [], line.split(" ", 1)[1]
            elif line.startswith("%output "):
                self.last_output = time.monotonic()
            elif line.startswith("%exit"):
                break
        self.closed = True
        self.replies.put((False, ["tmux control client exited"]))

    def command(self, line: str, timeout: float) -> list[str]:
        if self.closed:
            raise EnvironmentClosed("the tmux server is gone")
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            ok, lines = self.replies.get(timeout=timeout)
        except (BrokenPipeError, OSError) as e:
            raise EnvironmentClosed(f"tmux control client: {e}") from None
        except queue.Empty:
            raise EnvironmentClosed(f"tmux did not answer {line[:60]!r} in {timeout}s") from None
        if not ok:
            raise EnvironmentClosed(f"tmux: {' '.join(lines)} (command {line[:60]!r})")
        return lines

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class TerminalEnv(Environment):
    """reset() -> the first screen; step(action JSON) -> the screen after it; close()."""

    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg
        self.sandbox: Sandbox | None = None
        self.client: _ControlClient | None = None
        require_binary("tmux", "tmux")

    def reset(self, task: ScriptedTask | None = None) -> str:
        self.close()
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> str:
        self.sandbox = Sandbox(self.cfg.sandbox)
        self.sandbox.start()
        (self.sandbox.run_dir / "tmux.conf").write_text(_TMUX_CONF)
        sock = f"{RUN_DIR}/tmux.sock"
        # The server forks away from the client; `sleep` keeps the sandbox (and its pid
        # namespace, whose end kills the server) alive until close().
        script = (f"tmux -S {sock} -f {RUN_DIR}/tmux.conf new-session -d -s {SESSION} "
                  f"-x {self.cfg.width} -y {self.cfg.height} bash --norc --noprofile "
                  f"&& touch {RUN_DIR}/ready && exec sleep infinity")
        proc = self.sandbox.popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = self.sandbox.run_dir / "ready"  # written once the session exists
        deadline = time.monotonic() + self.cfg.step_timeout_s
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
                raise SandboxError(f"tmux did not start in the sandbox: {err.strip() or 'timeout'}")
            time.sleep(0.005)
        self.client = _ControlClient(str(self.sandbox.run_dir / "tmux.sock"))
        # The prompt may have been printed before the client attached (no %output event for
        # it) or not yet on a loaded machine: poll until it shows, then let it settle.
        while not self.screen() and time.monotonic() < deadline:
            time.sleep(0.005)
        self._settle(time.monotonic())
        return self.screen()

    def step(self, action: str) -> str:
        if self.client is None:
            raise EnvironmentClosed("step() before reset()")
        batches = parse_keystrokes(action)
        for batch in batches:
            self._send(batch["keystrokes"])
            time.sleep(min(float(batch.get("duration", 0)), self.cfg.step_timeout_s))
        self._settle(time.monotonic())
        return self.screen()

    def _send(self, keys: str) -> None:
        if not keys:
            return
        target = f"send-keys -t {SESSION}"
        if _KEY_NAME.match(keys):
            commands = [f"{target} {keys}"]
        else:
            commands = []
            for i, chunk in enumerate(keys.split("\n")):
                if i:
                    commands.append(f"{target} Enter")
                if chunk:
                    commands.append(f"{target} -l -- {_quote(chunk)}")
        for command in commands:  # one per line: each gets its own %begin/%end reply
            self.client.command(command, self.cfg.step_timeout_s)

    def _settle(self, since: float) -> None:
        """Wait until the pane has printed nothing for settle_s (at most step_timeout_s)."""
        deadline = since + self.cfg.step_timeout_s
        while True:
            now = time.monotonic()
            quiet = now - max(since, self.client.last_output)
            if quiet >= self.cfg.settle_s or now >= deadline:
                return
            time.sleep(min(self.cfg.settle_s - quiet, deadline - now))

    def screen(self) -> str:
        lines = self.client.command(f"capture-pane -p -t {SESSION}", self.cfg.step_timeout_s)
        lines = [line.rstrip() for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def __enter__(self) -> "TerminalEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
