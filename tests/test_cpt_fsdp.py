"""backend=hf CPT with FSDP2 (`backend.strategy=fsdp`) under torchrun: 2 sharded ranks train the
same model as one process taking the same batches by gradient accumulation, and the sharded (DCP)
checkpoints resume across world sizes, in both directions with the full (HF) checkpoints."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

# 4 steps with a checkpoint at step 2: the resume tests restart from it
STEPS = ["cpt.max_steps=4", "cpt.save_every=2", "cpt.warmup_steps=1", "cpt.batch_size=2",
         "backend.num_threads=1"]


def _run(ranks, run_dir, *extra, strategy="fsdp"):
    res = run_cli("cpt", run_dir, *STEPS, f"backend.strategy={strategy}", *extra, ranks=ranks, timeout=300)
    return res.stdout + res.stderr


def _final(run_dir):
    return load_file(run_dir / "cpt" / "final" / "model.safetensors")


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def _killed_after_step_2(src, dst):
    """A copy of a finished run as if killed after its step-2 checkpoint, and again while
    writing step 3 (no `complete` marker: resume must not trust it)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "cpt" / "final")
    shutil.rmtree(dst / "cpt" / "checkpoints" / "step_0000004")
    (dst / "cpt" / "metrics.json").unlink(missing_ok=True)
    torn = dst / "cpt" / "checkpoints" / "step_0000003"
    shutil.copytree(dst / "cpt" / "checkpoints" / "step_0000002", torn)
    (torn / "complete").unlink()
    return dst


@pytest.fixture(scope="module")
def runs(prepared_run, tmp_path_factory):
    """One process with grad_accum 2 (full checkpoints) and 2 FSDP ranks with grad_accum 1
    (sharded checkpoints), both to step 4 with a checkpoint at step 2."""
    root = tmp_path_factory.mktemp("fsdp")
    one, fsdp = root / "one", root / "fsdp"
    shutil.copytree(prepared_run, one)
    shutil.copytree(prepared_run, fsdp)
    _run(1, one, "cpt.grad_accum=2")
    _run(2, fsdp, "cpt.grad_accum=1")
    return one, fsdp


def test_fsdp_two_ranks_equal_one_rank_with_accumulation(runs):
    one, fsdp = runs
    metrics = json.loads((fsdp / "cpt" / "metrics.json").read_text())
    assert (metrics["data_parallel"], metrics["strategy"]) == (2, "fsdp")
    step2 = fsdp / "cpt" / "checkpoints" / "step_0000002"
    assert (step2 / "dcp" / ".metadata").exists() and not (step2 / "model.safetensors").exists()
    state = json.loads((step2 / "state.json").read_text())
    assert (state["dp_size"], state["strategy"]) == (2, "fsdp")
    _assert_same(_final(one), _final(fsdp))


@pytest.mark.parametrize("ranks,strategy", [(1, "fsdp"), (2, "fsdp"), (2, "ddp")])
def test_fsdp_checkpoint_resumes_on_any_world_size(runs, tmp_path, ranks, strategy):
    one, fsdp = runs
    run = _killed_after_step_2(fsdp, tmp_path / "run")
    accum = 2 if ranks == 1 else 1  # the same global batch either way
    out = _run(ranks, run, f"cpt.grad_accum={accum}", strategy=strategy)
    assert "resumed from" in out and "step_0000002 (step 2, written by hf fsdp dp 2; DP 2 ->" in out
    _assert_same(_final(one), _final(run))


def test_full_checkpoint_resumes_on_fsdp_ranks(runs, tmp_path):
    one, _ = runs
    run = _killed_after_step_2(one, tmp_path / "run")
    out = _run(2, run, "cpt.grad_accum=1")
    assert "step_0000002 (step 2, written by hf none dp 1; DP 1 -> 2)" in out
    _assert_same(_final(one), _final(run))
