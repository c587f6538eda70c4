"""Training stages run through the CLI (`lwm <stage>` in a subprocess, under torchrun for
several ranks) on the tiny model, and comparisons of what they saved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import TINY, run_cli

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


# Runs `lwm <stage>` in this process after installing a kill point (argv[1]):
#   write:<glob>   SIGKILL just before a file whose absolute path matches the glob is written (open,
#                  torch.save, safetensors, Path.touch): a kill mid-save; the files written before stay
#   microstep:<n>  SIGKILL as the n-th micro-batch starts training: a kill mid-step
_KILLER = r"""
import builtins, fnmatch, io, os, pathlib, signal, sys
kind, _, arg = sys.argv[1].partition(":")

def die(what):
    sys.stderr.write(f"killed at {what}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "write":
    def check(path, mode="w"):
        if isinstance(path, (str, os.PathLike)) and any(m in mode for m in "wax") \
                and fnmatch.fnmatch(os.path.abspath(os.fspath(path)), arg):
            die(path)
    import torch, safetensors.torch
    def hook(mod, name, path_of, mode_of=lambda a, k: "w"):
        orig = getattr(mod, name)
        def wrapped(*a, **k):
            check(path_of(a, k), mode_of(a, k))
            return orig(*a, **k)
        setattr(mod, name, wrapped)
    hook(io, "open", lambda a, k: a[0] if a else k.get("file"),
         lambda a, k: a[1] if len(a) > 1 else k.get("mode", "r"))
    builtins.open = io.open  # pathlib opens with io.open
    hook(torch, "save", lambda a, k: a[1] if len(a) > 1 else k.get("f"))
    hook(safetensors.torch, "save_file", lambda a, k: a[1] if len(a) > 1 else k.get("filename"))
    hook(pathlib.Path, "touch", lambda a, k: a[0])
elif kind == "microstep":
    from transformers import Trainer
    orig, seen = Trainer.training_step, [0]
    def training_step(self, *a, **k):
        seen[0] += 1
        if seen[0] == int(arg):
            die(f"micro-batch {seen[0]}")
        return orig(self, *a, **k)
    Trainer.training_step = training_step
else:
    raise SystemExit(f"unknown kill point {sys.argv[1]}")
from launch.cli import main
main(sys.argv[2:])
"""


def killed(stage: str, run: Path, init: Path, at: str, *extra: str, steps: list[str] = STEPS) -> str:
    """Run `lwm <stage>` from `init` as `trained` does, SIGKILLed at the kill point `at` (see
    _KILLER); fails unless it died there. Its stderr."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": EXT_DIR}
    res = subprocess.run([sys.executable, "-c", _KILLER, at, stage, f"hydra.run.dir={run}", *TINY, *steps,
                          f"{stage}.init={init}", *extra], env=env, cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9 and "killed at" in res.stderr, \
        f"expected a kill at {at}, got exit {res.returncode}: {res.stderr[-3000:]}"
    return res.stderr
