"""Two real processes on CPU (torchrun, gloo): DDP, torch FSDP2, DeepSpeed ZeRO-2 and the
DeepSpeed-MoE layer with expert parallelism, each against its one-process (or non-EP) run.
The worker asserts the world size it got: a launcher that silently runs one process fails here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "helpers" / "backend_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(mode: str, tmp_path: Path, nproc: int) -> dict:
    out = tmp_path / f"{mode.replace(':', '_')}_{nproc}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_ext"))}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), mode, str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), mode, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == nproc
    return result


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run_worker("hf:none", tmp_path_factory.mktemp("single"), 1)["losses"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_hf_two_ranks_match_one(single, strategy, tmp_path):
    losses = run_worker(f"hf:{strategy}", tmp_path, 2)["losses"]
    # same global batch, same init: only the reduction order differs
    assert losses == pytest.approx(single, rel=1e-5)
    assert losses[0] == pytest.approx(single[0], rel=1e-6)


def test_deepspeed_zero2_two_ranks_match_one(single, tmp_path):
    losses = run_worker("ds_zero:2", tmp_path, 2)["losses"]
    assert losses == pytest.approx(single, rel=1e-5)


def test_deepspeed_moe_expert_parallel_equals_non_ep(tmp_path):
    dense = run_worker("ds_moe:1", tmp_path, 2)["losses"]
    ep2 = run_worker("ds_moe:2", tmp_path, 2)["losses"]
    # the forward is the same network, bit for bit; after an update only the order of the
    # expert-gradient sums differs (all-to-all vs allreduce), a few ulps
    assert ep2[0] == dense[0]
    assert ep2 == pytest.approx(dense, rel=1e-6, abs=0)
    assert ep2[-1] < ep2[0]
