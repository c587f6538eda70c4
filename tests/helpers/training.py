"""Training stages run through the CLI (`lwm <stage>` in a subprocess, under torchrun for
several ranks) on the tiny model, and comparisons of what they saved."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

# float32: the DeepSpeed preset trains in bf16, which would blur the comparison with backend=hf.
STEPS = ["sft.max_steps=4", "sft.save_every=2", "sft.log_every=1", "sft.batch_size=2",
         "backend.num_threads=1", "backend.dtype=float32"]
# torch's own default extension cache, kept across runs: DeepSpeed's shared-memory allreduce op
# compiles once (~60 s) and is then loaded from there.
EXT_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" /
                                                     f"py{sys.version_info[0]}{sys.version_info[1]}_cpu"))


def trained(stage: str, run: Path, init: Path, *extra: str, steps: list[str] = STEPS, ranks: int = 1) -> dict:
    """Run `lwm <stage>` from `init`; its metrics."""
    run_cli(stage, run, *steps, f"{stage}.init={init}", *extra, ranks=ranks,
            env={"TORCH_EXTENSIONS_DIR": EXT_DIR}, timeout=300)
    return json.loads((run / stage / "metrics.json").read_text())


def sft(run: Path, init: Path, *extra: str, ranks: int = 1) -> dict:
    return trained("sft", run, init, *extra, ranks=ranks)


def weights(run: Path, stage: str = "sft") -> dict:
    return load_file(run / stage / "final" / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    # DeepSpeed's gathered state dict also carries the tied lm_head; the shared keys must agree.
    assert set(a) <= set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def fresh(prepared_run: Path, dst: Path) -> Path:
    """A run folder holding only the prepared run's prepare/ output."""
    shutil.copytree(prepared_run / "prepare", dst / "prepare")
    return dst
