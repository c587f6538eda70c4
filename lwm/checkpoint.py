"""Training checkpoints: HF safetensors model + optimizer/scheduler/RNG state, resumable.

A checkpoint is complete only when its `complete` marker exists (written last), so a kill
during a save never leaves a checkpoint that resume would trust.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def save(ckpt_dir: Path, step: int, model, tok, optimizer, scheduler, extra: dict, keep: int = 2) -> Path:
    path = ckpt_dir / f"step_{step:07d}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": torch.from_numpy(np.random.get_state()[1].copy()),
                "python_rng": list(random.getstate()[1])}, path / "trainer_state.pt")
    (path / "state.json").write_text(json.dumps({"step": step, **extra}))
    (path / "complete").touch()
    for old in sorted(p for p in ckpt_dir.glob("step_*") if p != path)[:-max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / "complete").exists())
    return done[-1] if done else None


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    """resume: 'auto' (latest complete checkpoint, if any), 'never', or a checkpoint path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest(ckpt_dir)
    path = Path(resume)
    if not (path / "complete").exists():
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint")
    return path


def restore(path: Path, optimizer, scheduler) -> dict:
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np_state = list(np.random.get_state())
    np_state[1] = state["numpy_rng"].numpy()
    np.random.set_state(tuple(np_state))
    py_state = list(random.getstate())
    py_state[1] = tuple(state["python_rng"])
    random.setstate(tuple(py_state))
    return json.loads((path / "state.json").read_text())
