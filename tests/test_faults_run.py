"""Faults injected into a run, each of which once ended in exit 0 with a wrong result:

- a stage rerun with other settings (the old model resumed, the new values recorded);
- a second job in the same run directory;
- a starting checkpoint whose tokenizer is not the one the shards were made with;
- a checkpoint damaged after it was written, a kill between the final model and its metrics;
- metrics of a resumed run that covered only its last segment;
- a full disk (a 1 MiB tmpfs; a simulated ENOSPC where mounting is not allowed).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launch.identity import IdentityMismatch
from launch.lock import RunDirInUse, run_lock
from launch.stages import run_stage
from tests.conftest import make_cfg
from tests.helpers.checkpoint import assert_same_run

STEPS = ["cpt.max_steps=4", "cpt.save_every=2", "cpt.warmup_steps=1", "cpt.batch_size=2", "cpt.log_every=1"]


def cpt(run, *extra):
    """`lwm cpt` as the CLI runs it: lock, identity check, then the stage."""
    return run_stage(make_cfg(run, "stage=cpt", *STEPS, *extra))


@pytest.fixture(scope="module")
def whole(prepared_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    shutil.copytree(prepared_run, run)
    cpt(run)
    return run


def test_changed_settings_are_refused_by_name_then_started_over(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    with pytest.raises(IdentityMismatch, match=r"(?s)cpt.lr: 0.002 -> 0.001.*model.num_layers: 2 -> 3.*cpt.resume=never"):
        cpt(run, "model.num_layers=3", "cpt.lr=1e-3")
    recorded = json.loads((run / "cpt" / "identity.json").read_text())["shapes"]["config"]
    assert (recorded["model.num_layers"], recorded["cpt.lr"]) == (2, 0.002)  # the record still says what trained
    metrics = cpt(run, "model.num_layers=3", "cpt.lr=1e-3", "cpt.resume=never")
    assert metrics["resumed_from"] is None and metrics["steps"] == 4
    assert json.loads((run / "cpt" / "final" / "config.json").read_text())["num_hidden_layers"] == 3
    assert "num_layers: 3" in (run / "cpt" / "config.yaml").read_text()


def test_more_steps_train_on_from_the_last_checkpoint(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    assert cpt(run, "cpt.log_every=2")["steps"] == 4       # finished: kept as it is, and so is its record
    assert json.loads((run / "cpt" / "identity.json").read_text())["may_change"]["cpt.log_every"] == 1
    metrics = cpt(run, "cpt.max_steps=6")
    assert metrics["steps"] == 6 and metrics["resumed_from"].endswith("step_0000004")
    with pytest.raises(RuntimeError, match="trained for 6 steps, more than cpt.max_steps=4"):
        cpt(run)


def test_a_second_job_in_the_run_dir_is_refused_and_a_dead_one_releases_it(tmp_path):
    with run_lock(tmp_path, "cpt"):
        with pytest.raises(RunDirInUse, match="in use by another lwm job \\(stage cpt, pid"):
            with run_lock(tmp_path, "sft"):
                pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from launch.lock import run_lock\nwith run_lock(Path(sys.argv[1]), 'rl'):\n"
                               "    print('held', flush=True); time.sleep(600)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirInUse, match="stage rl"):
        with run_lock(tmp_path, "cpt"):
            pass
    holder.kill()
    holder.wait()
    with run_lock(tmp_path, "cpt"):  # the kernel released the dead job's lock
        pass


def test_a_checkpoint_with_another_tokenizer_is_refused(prepared_run, sft_init, tmp_path):
    from lwm.tokenizer import load_tokenizer
    other = tmp_path / "other_tokenizer_ckpt"
    shutil.copytree(sft_init, other)
    tok = load_tokenizer(other)
    tok.add_tokens(["<|another_vocabulary|>"])
    tok.save_pretrained(other)
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run)
    with pytest.raises(ValueError, match=f"tokenized with {run / 'prepare' / 'tokenizer'}.*{other}"):
        cpt(run, f"cpt.init={other}")
    assert cpt(run, f"cpt.init={sft_init}", "cpt.resume=never")["steps"] == 4  # the same tokenizer trains


def test_a_damaged_checkpoint_falls_back_to_the_one_before(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    shutil.rmtree(run / "cpt" / "final")
    (run / "cpt" / "metrics.json").unlink()
    damaged = run / "cpt" / "checkpoints" / "step_0000004" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    metrics = cpt(run)
    assert metrics["resumed_from"].endswith("step_0000002") and metrics["steps"] == 4
    assert_same_run(whole, run)


def test_a_kill_between_the_final_model_and_its_metrics_is_finished_on_rerun(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    (run / "cpt" / "metrics.json").unlink()
    (run / "cpt" / "final" / "complete").unlink()
    metrics = cpt(run)
    assert metrics["steps"] == 4 and metrics["resumed_from"].endswith("step_0000004")
    assert (run / "cpt" / "final" / "complete").exists()
    assert_same_run(whole, run)


def test_metrics_of_a_resumed_run_cover_the_whole_run(whole, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(whole.parent / "run", run)
    for name in ("final", "checkpoints", "metrics.json", "identity.json"):
        path = run / "cpt" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    flag = tmp_path / "preempt"
    flag.touch()
    monkeypatch.setenv("LWM_PREEMPT_FILE", str(flag))
    assert cpt(run) == {"steps": 1, "preempted": True}
    flag.unlink()
    resumed = cpt(run)
    done = json.loads((whole / "cpt" / "metrics.json").read_text())
    assert resumed["resumed_from"].endswith("step_0000001")
    for key in ("train_loss_first", "train_loss_last", "heldout_loss_before", "heldout_loss_after", "tokens"):
        assert resumed[key] == pytest.approx(done[key], rel=1e-6), key


def test_a_full_disk_is_named(prepared_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            (run / "cpt").mkdir()
            (run / "cpt" / "checkpoints").symlink_to(small)
            with pytest.raises(OSError, match="no space left on device writing the checkpoint .*step_0000002") as err:
                cpt(run)
            assert err.value.errno == errno.ENOSPC
            assert not any(small.iterdir())  # the partial checkpoint is gone, its space free again
        else:  # no mount allowed here: the writer fails as a full disk makes it fail
            pytest.skip("cannot mount a tmpfs on this machine")
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(small)], check=False)  # a failed writer may still hold a file


def test_a_sweep_rerun_with_new_values_is_refused(tmp_path):
    """`-m` under the same sweep folder with other values: every job refuses (once: each job
    printed nothing wrong, skipped its finished work and recorded values that never ran)."""
    root = Path(__file__).resolve().parent.parent

    def sweep(values):
        return subprocess.run([sys.executable, "-m", "launch.cli", "collect", "-m", f"collect.max_steps={values}",
                               "collect.num_trajectories=2", "wandb.mode=disabled",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=root, capture_output=True,
                              text=True, timeout=300)
    assert sweep("3,4").returncode == 0
    again = sweep("5,6")
    assert again.returncode != 0 and "collect.max_steps: 3 -> 5" in again.stderr
    recorded = json.loads((tmp_path / "sweep" / "job0" / "collect" / "identity.json").read_text())
    assert recorded["shapes"]["config"]["collect.max_steps"] == 3
