"""Training checkpoints, resumable, in one of two layouts under ckpt_dir/step_N:

- full: HF safetensors model + optimizer/scheduler/RNG state (one process, or DDP's rank 0);
- sharded (FSDP2): every rank writes its shards of model and optimizer with
  torch.distributed.checkpoint into step_N/dcp; rank 0 adds tokenizer, model config,
  scheduler/RNG. DCP reshards on load, so any data-parallel size (or one process) resumes it.

A checkpoint is complete only when its `complete` marker exists (written last, by rank 0 once
every rank has finished), so a kill during a save never leaves a checkpoint that resume would trust.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

SHARDS = "dcp"  # the DCP folder inside a sharded checkpoint


def save(ckpt_dir: Path, step: int, model, tok, optimizer, scheduler, extra: dict, keep: int = 2) -> Path:
    path = ckpt_dir / f"step_{step:07d}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    torch.save({"optimizer": optimizer.state_dict(), **_trainer_state(scheduler)}, path / "trainer_state.pt")
    (path / "state.json").write_text(json.dumps({"step": step, **extra}))
    (path / "complete").touch()
    _prune(ckpt_dir, path, keep)
    return path


def save_sharded(ckpt_dir: Path, step: int, model, tok, optimizer, scheduler, extra: dict,
                 keep: int = 2) -> Path:
    """Collective: every rank calls it with its FSDP2 model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    path, main = ckpt_dir / f"step_{step:07d}", is_main()
    if main:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    barrier()  # no rank writes shards into a directory rank 0 is still clearing
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=path / SHARDS)
    if main:
        tok.save_pretrained(path)
        model.config.save_pretrained(path)  # resume builds the architecture from it
        torch.save(_trainer_state(scheduler), path / "trainer_state.pt")
        (path / "state.json").write_text(json.dumps({"step": step, **extra}))
    barrier()  # every rank's shards are on disk before the marker says so
    if main:
        (path / "complete").touch()
        _prune(ckpt_dir, path, keep)
    return path


def is_sharded(path: Path) -> bool:
    return (path / SHARDS).is_dir()


def model_skeleton(path: Path, mcfg, dtype: str = "float32"):
    """The model architecture of a sharded checkpoint, randomly initialised: restore() loads
    the weights after the model is wrapped (sharded or not)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lwm.modeling import DTYPES
    config = AutoConfig.from_pretrained(path)
    config.output_router_logits = False
    kwargs = {"attn_implementation": mcfg.attn_implementation}
    if mcfg.experts_implementation:
        kwargs["experts_implementation"] = mcfg.experts_implementation
    return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], **kwargs)


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


def restore(path: Path, optimizer, scheduler, model=None) -> dict:
    """Optimizer, scheduler and RNG state (and, from a sharded checkpoint, the weights) into a
    run of any data-parallel size. `model` (unwrapped, after fully_shard if FSDP) is needed for
    a sharded checkpoint, and to shard a full checkpoint's optimizer state over FSDP ranks."""
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    if is_sharded(path):
        if model is None:
            raise ValueError(f"resume: {path} is a sharded (FSDP/DCP) checkpoint; pass the model")
        _load_shards(path, model, optimizer)
    elif model is not None and has_dtensors(model):
        _load_full_optimizer_sharded(state["optimizer"], model, optimizer)
    elif "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    else:
        raise ValueError(f"resume: {path} has neither model shards ({SHARDS}/) nor optimizer state")
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np_state = list(np.random.get_state())
    np_state[1] = state["numpy_rng"].numpy()
    np.random.set_state(tuple(np_state))
    py_state = list(random.getstate())
    py_state[1] = tuple(state["python_rng"])
    random.setstate(tuple(py_state))
    return json.loads((path / "state.json").read_text())


def _load_shards(path: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    # The live state dicts say which slice each rank owns; DCP fills them from whatever
    # sharding wrote the checkpoint.
    model_sd, optim_sd = get_state_dict(model, optimizer)
    shards = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(shards, checkpoint_id=path / SHARDS)
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])


def _load_full_optimizer_sharded(full: dict, model, optimizer) -> None:
    """A full (DDP / one-process) optimizer state, keyed by parameter index, into FSDP ranks:
    re-keyed by parameter name (the optimizer was built on model.parameters(), same order)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )
    names = [name for name, _ in model.named_parameters()]
    if len(names) != sum(len(g["params"]) for g in full["param_groups"]):
        raise ValueError("resume: the checkpoint's optimizer state does not match this model's parameters")
    by_name = {"state": {names[i]: s for i, s in full["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in full["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def has_dtensors(model) -> bool:
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def _trainer_state(scheduler) -> dict:
    return {"scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": torch.from_numpy(np.random.get_state()[1].copy()),
            "python_rng": list(random.getstate()[1])}


def _prune(ckpt_dir: Path, keep_path: Path, keep: int) -> None:
    for old in sorted(p for p in ckpt_dir.glob("step_*") if p != keep_path)[:-max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)


def is_main() -> bool:
    """Rank 0 of the process group, or the only process (the backends' rank test too)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
