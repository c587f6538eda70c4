"""The web domain's application: Trac 1.6 (PyPI), an issue tracker with a wiki, served by its
own `tracd` on 127.0.0.1, one fresh copy of a template project per episode.

Trac lives in its own virtual environment (its pins clash with other web packages), made once:
    python3 -m venv ~/.cache/lwm/web/venv && ~/.cache/lwm/web/venv/bin/pip install Trac==1.6
The template project (tickets, milestones, components, wiki pages, anonymous write access) is
built once with trac-admin and Trac's own model API into the cache and copied per episode, so
every episode starts from the same database and nothing an episode did survives it.
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Run by the venv's python: content of the template project, through Trac's own API.
_SEED = r'''
import sys
from trac.env import Environment
from trac.ticket.model import Ticket
from trac.wiki.model import WikiPage
env = Environment(sys.argv[1])
tickets = [
 ("Login page rejects passwords with a colon", "defect", "major", "accounts", "milestone1",
  "Passwords containing ':' fail to authenticate since the last release."),
 ("Add CSV export to the weekly report", "enhancement", "minor", "reports", "milestone2",
  "Managers want the weekly report as CSV for their spreadsheets."),
 ("Search ignores words shorter than four letters", "defect", "minor", "search", "milestone1",
  "Searching for 'api' or 'ssh' returns nothing."),
 ("Document the backup procedure", "task", "major", "docs", "milestone3",
  "Write down how the nightly database backup is restored."),
 ("Timeline is slow with many changesets", "defect", "critical", "performance", "milestone2",
  "The timeline takes 20 seconds to load for a 90 day range."),
 ("Allow attaching screenshots to tickets", "enhancement", "major", "tickets", "milestone3",
  "Drag and drop of images into the ticket form."),
]
for summary, type_, prio, comp, ms, desc in tickets:
    t = Ticket(env)
    t.populate({"summary": summary, "type": type_, "priority": prio, "component": comp,
                "milestone": ms, "description": desc, "reporter": "alice", "status": "new"})
    t.insert()
pages = {
 "TeamHandbook": "= Team Handbook =\nHow we work.\n\n== On call ==\nThe on-call engineer answers "
                 "pages within 15 minutes.\n\n== Releases ==\nReleases happen every second Tuesday."
                 "\nSee also ReleaseChecklist.",
 "ReleaseChecklist": "= Release Checklist =\n 1. Freeze the branch\n 1. Run the test suite\n "
                     "1. Tag the release\n 1. Announce on the mailing list",
}
for name, text in pages.items():
    p = WikiPage(env, name)
    p.text = text
    p.save("alice", "initial version")
'''

_ADMIN = [
    ["permission", "add", "anonymous", "TICKET_CREATE", "TICKET_MODIFY", "WIKI_CREATE",
     "WIKI_MODIFY", "MILESTONE_VIEW", "REPORT_VIEW"],
    ["component", "remove", "component1"], ["component", "remove", "component2"],
    *[["component", "add", c, "alice"] for c in
      ("accounts", "reports", "search", "docs", "performance", "tickets")],
]


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # tracd does too: ignore TIME_WAIT
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port on 127.0.0.1")


class TracApp:
    """A Trac project template in the cache, and a tracd serving a fresh copy per episode."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.venv = Path(cfg.trac_venv).expanduser()
        self.tracd = self.venv / "bin" / "tracd"
        if not self.tracd.exists():
            raise FileNotFoundError(
                f"{self.tracd} missing: python3 -m venv {cfg.trac_venv} && "
                f"{cfg.trac_venv}/bin/pip install Trac==1.6")
        self.template = Path(cfg.cache_dir).expanduser() / "trac-template"
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.port = 0
        self._ensure_template()

    def _ensure_template(self) -> None:
        self.template.parent.mkdir(parents=True, exist_ok=True)
        with open(self.template.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (self.template / "ready").exists():
                return
            tmp = self.template.with_name(f".trac-building-{time.time_ns()}")
            admin = str(self.venv / "bin" / "trac-admin")
            run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True)
            run(admin, str(tmp), "initenv", "Acme Project", "sqlite:db/trac.db")
            for cmd in _ADMIN:
                run(admin, str(tmp), *cmd)
            run(str(self.venv / "bin" / "python"), "-c", _SEED, str(tmp))
            (tmp / "ready").write_text("")
            shutil.rmtree(self.template, ignore_errors=True)
            tmp.rename(self.template)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        """A fresh project copy served on 127.0.0.1; returns its base URL."""
        self.stop()
        self.workdir = Path(tempfile.mkdtemp(prefix="lwm-web-"))
        env_dir = self.workdir / "acme"
        shutil.copytree(self.template, env_dir)
        self.port = _free_port(self.cfg.port)
        self.proc = subprocess.Popen(
            [str(self.tracd), "-s", "--hostname", "127.0.0.1", "--port", str(self.port), str(env_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracd exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.base_url
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"tracd did not listen on port {self.port} within {self.cfg.start_timeout_s}s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
