"""A throwaway sandbox for agent actions: bubblewrap, a pids cgroup, rlimits, a sized tmpfs.

One Sandbox per episode. Inside: no network (every namespace unshared), a read-only root (a
separate rootfs, or the host's /usr only: never the host's /root, /work, /home or /tmp), and
one writable tmpfs of `disk_mb` holding $HOME, /tmp, /dev/shm and /run/lwm. A pids cgroup caps
the process count (RLIMIT_NPROC does nothing for root), prlimit caps address space, file size
and CPU seconds per process. close() kills everything in the cgroup and wipes the tmpfs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from lwm.config import SandboxConfig

log = logging.getLogger(__name__)

HOME = "/home/user"
RUN_DIR = "/run/lwm"        # the writable dir the host also sees (tmux socket lives here)
UID = GID = 1000
ENV = {
    "HOME": HOME, "USER": "user", "LOGNAME": "user", "SHELL": "/bin/bash",
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    "TERM": "xterm", "LANG": "C.UTF-8", "PS1": r"user@sandbox:\w$ ",
}
# Non-secret host files the minimal /etc needs (dynamic linker cache, readline, time zone).
_ETC_COPY = ("ld.so.cache", "ld.so.conf", "inputrc", "localtime", "nsswitch.conf")
_HOST_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")


class SandboxError(RuntimeError):
    pass


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxError(f"'{name}' not found on PATH: the terminal sandbox needs it "
                           f"(apt-get install {package})")
    return path


class _PidsCgroup:
    """A pids cgroup for one sandbox: v1 (/sys/fs/cgroup/pids) or v2 with the pids controller."""

    def __init__(self, name: str, max_pids: int):
        self.path = self._create(name, max_pids)

    @staticmethod
    def _create(name: str, max_pids: int) -> Path:
        candidates = [Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")]
        errors = []
        for parent in candidates:
            if not (parent / "cgroup.procs").exists():
                continue
            try:
                if not parent.name == "pids":  # v2: the controller must be enabled for children
                    if "pids" not in (parent / "cgroup.controllers").read_text().split():
                        continue
                    if "pids" not in (parent / "cgroup.subtree_control").read_text().split():
                        (parent / "cgroup.subtree_control").write_text("+pids")
                path = parent / f"lwm-{name}"
                path.mkdir()
                (path / "pids.max").write_text(str(max_pids))
                return path
            except OSError as e:
                errors.append(f"{parent}: {e}")
        raise SandboxError(
            "no writable pids cgroup (tried /sys/fs/cgroup/pids, /sys/fs/cgroup/unified, "
            "/sys/fs/cgroup); the sandbox needs one to cap fork bombs: run as root. "
            + "; ".join(errors))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def destroy(self, timeout: float = 5.0) -> None:
        # A fork bomb refills freed slots, so kill repeatedly until the group is empty.
        kill_file = self.path / "cgroup.kill"  # v2 (5.14+) kills atomically
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                break
            if kill_file.exists():
                kill_file.write_text("1")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY until the last zombie is reaped
                time.sleep(0.02)
        log.warning("could not remove cgroup %s", self.path)


class Sandbox:
    """Usage: `with Sandbox(cfg) as sb: sb.run("echo hi")` or `sb.popen([...])` for services."""

    def __init__(self, cfg: SandboxConfig, name: str = ""):
        self.cfg = cfg
        self.name = name or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir: Path | None = None       # host temp dir: etc/ and the tmpfs fs/
        self.cgroup: _PidsCgroup | None = None
        self.procs: list[subprocess.Popen] = []
        self._mounted = False

    # Host paths of the writable dirs, for the host side (tmux socket, tests).
    @property
    def home(self) -> Path:
        return self.dir / "fs" / "home"

    @property
    def run_dir(self) -> Path:
        return self.dir / "fs" / "run"

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self._bwrap = require_binary("bwrap", "bubblewrap")
        self._prlimit = require_binary("prlimit", "util-linux")
        if self.cfg.rootfs and not Path(self.cfg.rootfs, "usr").is_dir():
            raise SandboxError(f"sandbox.rootfs '{self.cfg.rootfs}' is not a root file system")
        self.dir = Path(tempfile.mkdtemp(prefix=f"lwm-sandbox-{self.name}-"))
        fs = self.dir / "fs"
        fs.mkdir()
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.cfg.disk_mb}m,mode=0755",
                            "tmpfs", str(fs)], check=True, capture_output=True, text=True)
            self._mounted = True
        except (OSError, subprocess.CalledProcessError) as e:
            err = getattr(e, "stderr", "") or e
            log.warning("tmpfs mount failed (%s): sandbox disk is NOT capped at %d MB",
                        str(err).strip(), self.cfg.disk_mb)
        for sub in ("home", "tmp", "shm", "run"):
            (fs / sub).mkdir()
        os.chmod(fs / "tmp", 0o1777)
        self._write_etc(self.dir / "etc")
        self.cgroup = _PidsCgroup(self.name, self.cfg.max_pids)

    @staticmethod
    def _write_etc(etc: Path) -> None:
        etc.mkdir()
        (etc / "passwd").write_text(f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                    f"user:x:{UID}:{GID}:user:{HOME}:/bin/bash\n"
                                    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        (etc / "group").write_text(f"root:x:0:\nuser:x:{GID}:\nnogroup:x:65534:\n")
        (etc / "hostname").write_text("sandbox\n")
        (etc / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n")
        (etc / "alternatives").mkdir()  # mount point for the host's (symlinks only)
        for name in _ETC_COPY:
            if Path("/etc", name).is_file():
                shutil.copy(Path("/etc", name), etc / name)

    def bwrap_argv(self, argv: list[str], cwd: str = HOME) -> list[str]:
        """The full host command: join the cgroup, set rlimits, enter bwrap, run argv."""
        fs, etc = self.dir / "fs", self.dir / "etc"
        a = [self._bwrap, "--unshare-all", "--die-with-parent", "--new-session",
             "--unshare-user", "--uid", str(UID), "--gid", str(GID), "--cap-drop", "ALL",
             "--hostname", "sandbox"]
        if self.cfg.rootfs:
            a += ["--ro-bind", self.cfg.rootfs, "/"]
            for name in ("passwd", "group", "hostname", "hosts"):
                if Path(self.cfg.rootfs, "etc", name).exists():
                    a += ["--ro-bind", str(etc / name), f"/etc/{name}"]
        else:
            for d in _HOST_DIRS:
                if os.path.islink(d):  # merged /usr: /bin -> usr/bin
                    a += ["--symlink", os.readlink(d), d]
                elif os.path.isdir(d):
                    a += ["--ro-bind", d, d]
            a += ["--ro-bind", str(etc), "/etc"]
            if os.path.isdir("/etc/alternatives"):  # Debian's awk, pager, editor links
                a += ["--ro-bind", "/etc/alternatives", "/etc/alternatives"]
        # Everything writable lives in the one sized tmpfs; the rest is remounted read-only.
        a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/home", "--tmpfs", "/run",
              "--bind", str(fs / "home"), HOME, "--bind", str(fs / "tmp"), "/tmp",
              "--bind", str(fs / "shm"), "/dev/shm", "--bind", str(fs / "run"), RUN_DIR,
              "--remount-ro", "/home", "--remount-ro", "/run", "--remount-ro", "/dev",
              "--remount-ro", "/", "--clearenv", "--chdir", cwd]
        for key, value in ENV.items():
            a += ["--setenv", key, value]
        mb = 1024 * 1024
        limits = [self._prlimit, f"--as={self.cfg.memory_mb * mb}",
                  f"--fsize={self.cfg.file_size_mb * mb}", f"--cpu={self.cfg.cpu_seconds}",
                  "--core=0", "--"]
        # sh joins the cgroup before exec, so every descendant is counted from the start.
        join = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup.path)]
        return join + limits + a + ["--"] + argv

    def popen(self, argv: list[str], cwd: str = HOME, **kwargs) -> subprocess.Popen:
        if self.dir is None:
            raise SandboxError("sandbox not started")
        proc = subprocess.Popen(self.bwrap_argv(argv, cwd), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, command: str, timeout: float = 30.0, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run a bash command to completion in the sandbox (its own bwrap, same file system)."""
        proc = self.popen(["/bin/bash", "--norc", "--noprofile", "-c", command],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace")
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n[sandbox: timed out after {timeout}s]"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close(self) -> None:
        """Kill every process, remove the cgroup, unmount and delete the file system."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("sandbox process %d did not exit", proc.pid)
        self.procs.clear()
        if self.cgroup is not None:
            self.cgroup.destroy()
            self.cgroup = None
        if self.dir is not None:
            if self._mounted:
                r = subprocess.run(["umount", "--lazy", str(self.dir / "fs")], capture_output=True)
                if r.returncode != 0:
                    log.warning("umount %s failed: %s", self.dir / "fs", r.stderr.strip())
                self._mounted = False
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
