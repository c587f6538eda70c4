"""`lwm cpt backend=deepspeed` end to end on the prepared tiny run (one rank, CPU): trains, writes
DeepSpeed checkpoints with the data-parallel size, and saves an HF checkpoint that loads."""

from __future__ import annotations

import importlib

import pytest

from lwm.tracking import RunPaths
from tests.conftest import make_cfg


def test_deepspeed_cpt_trains_and_saves(run_copy, monkeypatch, tmp_path):
    import deepspeed  # noqa: F401
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    # the shared-memory allreduce op is a ~60 s JIT build that one rank never uses
    monkeypatch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
    cfg = make_cfg(run_copy, "backend=deepspeed", "backend.dtype=float32", "backend.deepspeed.torch_adam=true",
                   "cpt.max_steps=4", "cpt.save_every=2", "cpt.log_every=1")
    from pretrain.train import train
    result = train(cfg, RunPaths(run_copy))
    assert result["steps"] == 4 and result["backend"] == "deepspeed"
    assert (RunPaths(run_copy).model("cpt") / "complete").exists()
    ckpts = list((run_copy / "cpt" / "checkpoints_deepspeed").glob("step_*"))
    assert ckpts, "no DeepSpeed checkpoint written"
    from lwm.modeling import load_model
    load_model(RunPaths(run_copy).model("cpt"), cfg.model)


def test_resume_with_another_dp_size_is_refused():
    from pretrain.backends.dist import check_resume_dp
    check_resume_dp({"dp_size": 4}, 4, "")
    with pytest.raises(RuntimeError, match="data-parallel size 4, this job has 2"):
        check_resume_dp({"dp_size": 4}, 2, "convert it first")
