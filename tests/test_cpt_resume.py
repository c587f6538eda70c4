"""A CPT run killed mid-training resumes from its last checkpoint and ends as if never killed."""

import os
import signal
import subprocess
import sys
import time

from tests.conftest import TINY
from tests.helpers.checkpoint import assert_same_run

ARGS = ["cpt.max_steps=16", "cpt.save_every=2", "cpt.batch_size=4", "cpt.warmup_steps=2",
        "backend.num_threads=1"]


def _cpt(run_dir, wait=True):
    cmd = [sys.executable, "-m", "launch.cli", "cpt", f"hydra.run.dir={run_dir}", *TINY, *ARGS]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_cpt_resume_after_kill(prepared_run, tmp_path):
    import shutil
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shutil.copytree(prepared_run, whole)
    shutil.copytree(prepared_run, killed)

    done = _cpt(whole)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = _cpt(killed, wait=False)
    ckpts = killed / "cpt" / "checkpoints"
    deadline = time.time() + 240
    while not any(ckpts.glob("step_*/complete")) and time.time() < deadline:
        assert proc.poll() is None, "cpt exited before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "cpt" / "final" / "complete").exists(), "the run finished before the kill"

    resumed = _cpt(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout

    assert_same_run(whole, killed)
