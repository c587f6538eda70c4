"""backend=hf CPT under torchrun: 2 data-parallel ranks (gloo) train the same model as one process
taking the same batches by gradient accumulation."""

import shutil

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

STEPS = ["cpt.max_steps=4", "cpt.save_every=2", "cpt.warmup_steps=1", "cpt.batch_size=2",
         "backend.num_threads=1"]


def test_two_ranks_equal_one_rank_with_accumulation(prepared_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(prepared_run, one)
    shutil.copytree(prepared_run, two)
    run_cli("cpt", one, *STEPS, "cpt.grad_accum=2", timeout=300)
    run_cli("cpt", two, *STEPS, "cpt.grad_accum=1", ranks=2, timeout=300)
    import json
    assert json.loads((two / "cpt" / "metrics.json").read_text())["data_parallel"] == 2
    a = load_file(one / "cpt" / "final" / "model.safetensors")
    b = load_file(two / "cpt" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
