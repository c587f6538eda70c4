"""On a CUDA GPU (skipped elsewhere): the one loop's hf engine trains on the device, in bf16, and
starts from the loss the CPU computes in fp32 for the same first batch."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.gpu
STEPS = ["cpt.max_steps=2", "cpt.save_every=2", "cpt.batch_size=2", "cpt.warmup_steps=0"]


def test_hf_engine_trains_on_the_gpu_in_bf16(prepared_run, tmp_path):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        run = tmp_path / dtype
        shutil.copytree(prepared_run, run)
        env = {} if dtype == "bfloat16" else {"CUDA_VISIBLE_DEVICES": ""}
        run_cli("cpt", run, *STEPS, f"backend.dtype={dtype}", env=env)
        losses[dtype] = json.loads((run / "cpt" / "metrics.json").read_text())["train_loss_first"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
