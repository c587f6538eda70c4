"""The sandbox keeps agent actions off the host: files, network, processes, memory, disk.

These run real bubblewrap and need root (a pids cgroup and a tmpfs mount); without bwrap they
fail with the install hint rather than skip. CI: apt-get install bubblewrap tmux.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from data_pipeline import sandbox as sandbox_mod
from data_pipeline.sandbox import Sandbox, SandboxError
from lwm.config import SandboxConfig


@pytest.fixture
def sb():
    box = Sandbox(SandboxConfig(max_pids=32, memory_mb=256, file_size_mb=8, disk_mb=16, cpu_seconds=2))
    box.start()
    yield box
    box.close()


def test_host_files_are_out_of_reach(sb, tmp_path):
    host_file = tmp_path / "precious.txt"
    host_file.write_text("original\n")
    result = sb.run(
        f"echo pwned > {host_file}; echo $? ;"
        "echo pwned > /work/pwned.txt; touch /root/pwned; touch /usr/pwned; touch /etc/passwd;"
        f"test -e {host_file} && echo VISIBLE; ls /work /root /home; cat /etc/shadow;"
        "echo x > /tmp/inside.txt && echo tmp-ok; echo x > ~/mine.txt && echo home-ok")
    out = result.stdout + result.stderr
    assert host_file.read_text() == "original\n"
    assert not Path("/work/pwned.txt").exists() and not Path("/root/pwned").exists()
    assert not Path("/usr/pwned").exists()
    assert "VISIBLE" not in out
    assert "tmp-ok" in out and "home-ok" in out           # its own /tmp and $HOME are writable
    assert not Path("/tmp/inside.txt").exists()            # ... and are not the host's
    assert "Read-only file system" in out or "No such file" in out


def test_minimal_identity_and_environment(sb):
    out = sb.run("whoami; hostname; echo $HOME $TERM $LANG; cat /etc/passwd").stdout
    assert out.splitlines()[:3] == ["user", "sandbox", "/home/user xterm C.UTF-8"]
    assert "root:x:0:0" in out and len(out.splitlines()) < 10  # not the host's passwd


def test_no_network(sb):
    code = ("import socket\n"
            "try:\n socket.create_connection(('1.1.1.1', 80), timeout=3); print('CONNECTED')\n"
            "except OSError as e: print('blocked', e)\n")
    result = sb.run(f"python3 -c \"{code}\"; ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
    assert "blocked" in result.stdout and "CONNECTED" not in result.stdout
    assert "eth" not in result.stdout  # only loopback exists


def test_fork_bomb_is_contained(sb):
    bomb = sb.popen(["/bin/bash", "-c", ":(){ :|:& };:"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    cgroup = sb.cgroup.path
    time.sleep(1.0)
    current = int((cgroup / "pids.current").read_text())
    assert current <= 32
    assert "max" in (cgroup / "pids.events").read_text()  # forks were refused at the cap
    t = time.monotonic()
    subprocess.run(["true"], check=True)                   # the host still forks fine
    assert time.monotonic() - t < 1.0
    sb.close()
    assert bomb.poll() is not None
    assert not cgroup.exists()


def test_memory_file_size_disk_and_cpu_limits(sb):
    mem = sb.run("python3 -c \"x = bytearray(512 * 1024 * 1024); print('ALLOCATED')\"")
    assert "MemoryError" in mem.stderr and "ALLOCATED" not in mem.stdout
    big = sb.run("head -c 20M /dev/zero > big.bin; echo status $?; stat -c %s big.bin")
    assert "status 153" in big.stdout                      # 128 + SIGXFSZ
    assert int(big.stdout.split()[-1]) <= 8 * 1024 * 1024
    disk = sb.run("for i in 1 2 3; do head -c 7M /dev/zero > f$i.bin || echo FULL; done")
    assert "No space left on device" in disk.stderr and "FULL" in disk.stdout
    t = time.monotonic()
    cpu = sb.run("while :; do :; done", timeout=20)
    assert cpu.returncode != 0 and time.monotonic() - t < 10  # killed by SIGXCPU after 2 s


def test_close_wipes_everything():
    box = Sandbox(SandboxConfig())
    box.start()
    box.run("echo data > ~/f.txt; sleep 300 &")
    d, cgroup = box.dir, box.cgroup.path
    assert (d / "fs" / "home" / "f.txt").exists()
    box.close()
    assert not d.exists() and not cgroup.exists()
    assert str(d) not in Path("/proc/mounts").read_text()


def test_missing_bwrap_is_a_clear_error(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox_mod.shutil, "which",
                        lambda name: None if name == "bwrap" else real_which(name))
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        Sandbox(SandboxConfig()).start()


def test_bwrap_is_installed():
    # A missing bwrap must fail the suite loudly (CI installs it), never skip it.
    assert shutil.which("bwrap"), "bubblewrap is not installed: apt-get install bubblewrap"
