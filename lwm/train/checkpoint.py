"""Training checkpoints: the policy every engine shares, and the torch engine's state files.

Policy (the training loop's): checkpoints live in <stage>/checkpoints/step_N. `begin` clears the
folder, the engine writes its state into it (collectively), `commit` writes state.json (the step
and the engine's layout) and then the `complete` marker, last, once every rank has finished, and
keeps the newest `keep`. A kill during a save therefore never leaves a checkpoint that resume
trusts; `resolve_resume` picks the newest complete one.

The torch engine's state, in one of two layouts:
- full: HF safetensors model + optimizer/RNG state (one process, or DDP's rank 0);
- sharded (FSDP2): every rank writes its shards of model and optimizer with
  torch.distributed.checkpoint into step_N/dcp; rank 0 adds tokenizer, model config,
  RNG state. DCP reshards on load, so any data-parallel size (or one process) resumes it.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lwm.train.dist import barrier, is_main

log = logging.getLogger("lwm.train")

SHARDS = "dcp"  # the DCP folder inside a sharded checkpoint
MARKER, STATE = "complete", "state.json"


def begin(ckpt_dir: Path, step: int) -> Path:
    """A fresh, empty step_N folder, seen by every rank."""
    path = ckpt_dir / f"step_{step:07d}"
    if is_main():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    barrier()  # no rank writes into a directory rank 0 is still clearing
    return path


def commit(path: Path, step: int, meta: dict, keep: int = 2) -> None:
    """Collective, after every rank wrote its state: the step's record, then the marker."""
    barrier()
    if is_main():
        # every file's size, so that a checkpoint damaged after the fact is not trusted on resume
        (path / STATE).write_text(json.dumps({"step": step, **meta, "files": _sizes(path)}))
        (path / MARKER).touch()
        _prune(path.parent, path, keep)
    barrier()


def read_state(path: Path) -> dict:
    return json.loads((path / STATE).read_text())


def _sizes(path: Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*"))
            if f.is_file() and f.name not in (STATE, MARKER)}


def damage(path: Path) -> list[str]:
    """What is wrong with a complete checkpoint's files against its record (empty: intact)."""
    try:
        recorded = read_state(path).get("files")
    except (OSError, ValueError) as e:
        return [f"{path / STATE} unreadable ({e})"]
    if recorded is None:
        return []
    now = _sizes(path)
    return ([f"{path / name} is missing" for name in recorded if name not in now] +
            [f"{path / name} has {now[name]} bytes, {size} were written" for name, size in recorded.items()
             if name in now and now[name] != size])


def write_full(path: Path, model, tok, optimizer) -> None:
    """Rank 0 of DDP, or the only process: weights, tokenizer, optimizer and RNG state."""
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    torch.save({"optimizer": optimizer.state_dict(), **_rng_state()}, path / "trainer_state.pt")


def write_sharded(path: Path, model, tok, optimizer) -> None:
    """Collective: every rank writes its FSDP2 shards of model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=path / SHARDS)
    if is_main():
        tok.save_pretrained(path)
        model.config.save_pretrained(path)  # resume builds the architecture from it
        torch.save(_rng_state(), path / "trainer_state.pt")


def is_sharded(path: Path) -> bool:
    return (path / SHARDS).is_dir()


def model_skeleton(path: Path, mcfg, dtype: str = "float32"):
    """The model architecture of a sharded checkpoint, randomly initialised: restore() loads
    the weights after the model is wrapped (sharded or not)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lwm.models.hf import DTYPES  # also registers sdpa_packed
    config = AutoConfig.from_pretrained(path)
    config.output_router_logits = False
    kwargs = {"attn_implementation": mcfg.attn_implementation}
    if mcfg.experts_implementation:
        kwargs["experts_implementation"] = mcfg.experts_implementation
    return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], **kwargs)


def complete(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.glob("step_*") if (p / MARKER).exists())


def latest(ckpt_dir: Path) -> Path | None:
    done = complete(ckpt_dir)
    return done[-1] if done else None


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    """resume: 'auto' (latest complete checkpoint, if any), 'never', or a checkpoint path; the
    one place the setting is read, for every engine."""
    if resume == "never":
        return None
    if resume == "auto":
        # the newest intact one: a checkpoint damaged after it was written falls back to the one before
        for path in reversed(complete(ckpt_dir)):
            problems = damage(path)
            if not problems:
                return path
            log.warning("resume: skipping damaged checkpoint %s: %s", path, "; ".join(problems[:3]))
        if complete(ckpt_dir):
            raise RuntimeError(f"resume: every checkpoint in {ckpt_dir} is damaged (see the warnings above); "
                               "start the stage over with <stage>.resume=never")
        return None
    path = Path(resume)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"resume={resume}: {path} is not a complete checkpoint (no '{MARKER}' "
                                f"marker); pass a step_N folder of <run>/<stage>/checkpoints, auto or never")
    problems = damage(path)
    if problems:
        raise RuntimeError(f"resume={resume}: the checkpoint is damaged: {'; '.join(problems[:3])}")
    return path


def restore(path: Path, optimizer, model=None) -> dict:
    """Optimizer and RNG state (and, from a sharded checkpoint, the weights) into a
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
    torch.set_rng_state(state["torch_rng"])
    np_state = list(np.random.get_state())
    np_state[1] = state["numpy_rng"].numpy()
    np.random.set_state(tuple(np_state))
    py_state = list(random.getstate())
    py_state[1] = tuple(state["python_rng"])
    random.setstate(tuple(py_state))
    return read_state(path)


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
    re-keyed by parameter name. Indices run over the param groups in order, and the groups were
    built the same way (lwm.train.optim) on the same parameters."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if len(names) != sum(len(g["params"]) for g in full["param_groups"]):
        raise ValueError("resume: the checkpoint's optimizer state does not match this model's parameters")
    by_name = {"state": {names[i]: s for i, s in full["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in full["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def has_dtensors(model) -> bool:
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def _rng_state() -> dict:
    return {"torch_rng": torch.get_rng_state(),
            "numpy_rng": torch.from_numpy(np.random.get_state()[1].copy()),
            "python_rng": list(random.getstate()[1])}


def _prune(ckpt_dir: Path, keep_path: Path, keep: int) -> None:
    for old in sorted(p for p in ckpt_dir.glob("step_*") if p != keep_path)[:-max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
