"""`lwm cpt backend=deepspeed` end to end on the prepared tiny run (one rank, CPU), through the one
training loop: it trains, writes DeepSpeed checkpoints with the data-parallel size, saves an HF
checkpoint that loads, honours `cpt.resume=<dir>`, and saves and stops on the preemption signal,
after which the rerun ends with the weights of an uninterrupted run."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
from lwm.tracking import RunPaths
from tests.conftest import make_cfg
from tests.helpers.checkpoint import assert_same_run

STEPS = ["backend=deepspeed", "backend.dtype=float32", "cpt.max_steps=4", "cpt.save_every=2",
         "cpt.log_every=1", "cpt.warmup_steps=1"]


@pytest.fixture
def no_shm_build(monkeypatch, tmp_path):
    import deepspeed  # noqa: F401  (imported before its comm module is patched)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    # the shared-memory allreduce op is a ~60 s JIT build that one rank never uses
    monkeypatch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)


def _cpt(run, *extra):
    from pretrain.train import train
    return train(make_cfg(run, *STEPS, *extra), RunPaths(run))


@pytest.fixture
def whole(prepared_run, tmp_path, no_shm_build):
    run = tmp_path / "whole"
    shutil.copytree(prepared_run, run)
    result = _cpt(run)
    assert result["steps"] == 4 and result["backend"] == "deepspeed"
    return run


def test_deepspeed_cpt_trains_and_saves(whole):
    from lwm.models.hf import load_model
    assert (RunPaths(whole).model("cpt") / "complete").exists()
    states = [json.loads((p / "state.json").read_text()) for p in sorted((whole / "cpt" / "checkpoints").glob("step_*"))]
    assert [(s["step"], s["dp_size"]) for s in states] == [(2, 1), (4, 1)]
    m = json.loads((whole / "cpt" / "metrics.json").read_text())
    assert m["heldout_loss_after"] < m["heldout_loss_before"]
    load_model(RunPaths(whole).model("cpt"))


def test_deepspeed_resumes_from_the_dir_it_is_given(whole, prepared_run, tmp_path):
    run = tmp_path / "given"
    shutil.copytree(prepared_run, run)
    step2 = tmp_path / "kept" / "step_0000002"
    shutil.copytree(whole / "cpt" / "checkpoints" / "step_0000002", step2)
    result = _cpt(run, f"cpt.resume={step2}")
    assert result["resumed_from"] == str(step2)
    assert_same_run(whole, run)
    shutil.copytree(prepared_run, tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        _cpt(tmp_path / "other", f"cpt.resume={tmp_path / 'missing'}")


def test_deepspeed_saves_and_stops_on_preemption(whole, prepared_run, tmp_path, monkeypatch):
    run = tmp_path / "preempted"
    shutil.copytree(prepared_run, run)
    flag = tmp_path / "preempt"
    flag.touch()  # as the Slurm batch script does on USR1
    monkeypatch.setenv("LWM_PREEMPT_FILE", str(flag))
    result = _cpt(run)
    assert result == {"steps": 1, "preempted": True}
    assert (run / "cpt" / "checkpoints" / "step_0000001" / "complete").exists()
    assert not (run / "cpt" / "final" / "complete").exists()
    flag.unlink()  # the requeued job
    assert _cpt(run)["resumed_from"].endswith("step_0000001")
    assert_same_run(whole, run)


def test_resume_with_another_dp_size_is_refused():
    from lwm.train.dist import check_resume_dp
    check_resume_dp({"dp_size": 4}, 4, "")
    with pytest.raises(RuntimeError, match="data-parallel size 4, this job has 2"):
        check_resume_dp({"dp_size": 4}, 2, "convert it first")
