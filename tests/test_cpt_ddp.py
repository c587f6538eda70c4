"""backend=hf CPT under torchrun: 2 data-parallel ranks (gloo) train the same model as one process
taking the same batches by gradient accumulation."""

import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.conftest import TINY

STEPS = ["cpt.max_steps=4", "cpt.save_every=2", "cpt.warmup_steps=1", "cpt.batch_size=2",
         "backend.num_threads=1"]


def _run(cmd, run_dir, *extra):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*cmd, "cpt", f"hydra.run.dir={run_dir}", *TINY, *STEPS, *extra],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_two_ranks_equal_one_rank_with_accumulation(prepared_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(prepared_run, one)
    shutil.copytree(prepared_run, two)
    _run([sys.executable, "-m", "lwm.cli"], one, "cpt.grad_accum=2")
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
          "-m", "lwm.cli"], two, "cpt.grad_accum=1")
    import json
    assert json.loads((two / "cpt" / "metrics.json").read_text())["data_parallel"] == 2
    a = load_file(one / "cpt" / "final" / "model.safetensors")
    b = load_file(two / "cpt" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
