"""Which model eval scores, and where its answers are kept: by the model's identity, never by
a folder name.

A local checkpoint's identity is its content fingerprint (weights, config, tokenizer:
lwm.identity.checkpoint_fingerprint) with the dtype and generation settings; an endpoint's is
its base_url, the model it reports at /v1/models (the entry's id and root, and the checkpoint
fingerprint `lwm serve` adds) and the generation settings. A model's predictions, judgements
and controllability answers live in eval/<label>/ beside identity.json. When a label names
another model than last time (rl/final after sft/final, both called `final`; a restarted server
on another checkpoint behind the same URL), the folder is set aside under
eval/by_identity/<identity>/ and comes back when that model is evaluated again. Prediction rows
also record the digest of the prompt they answer (eval/generate.py), so a changed eval set is
asked again sample by sample.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from lwm.endpoints import client
from lwm.identity import checkpoint_fingerprint, digest

log = logging.getLogger("lwm.eval")
STASH = "by_identity"


def label(ckpt: Path, stage_models: dict[str, Path]) -> str:
    """A checkpoint's name in tables and folders: its stage when it is one of this run's stage
    models, else its folder's name (with the parent's when that is `final` or `init`)."""
    for stage, path in stage_models.items():
        if ckpt.resolve() == path.resolve():
            return stage
    generic = ckpt.name in ("final", "init") and ckpt.parent.name
    return f"{ckpt.parent.name}_{ckpt.name}" if generic else ckpt.name


def local_identity(cfg, ckpt: Path) -> dict:
    return {"checkpoint": checkpoint_fingerprint(ckpt), "dtype": cfg.backend.dtype,
            "max_new_tokens": cfg.eval.max_new_tokens, "temperature": cfg.eval.temperature}


def endpoint_identity(ecfg) -> dict:
    return client.endpoint_identity(ecfg, temperature=ecfg.temperature, max_tokens=ecfg.max_tokens)


def model_dir(out: Path, name: str, identity: dict) -> Path:
    """eval/<name>/, holding the answers of the model with this identity and no other."""
    key, folder = digest(identity), out / name
    recorded = {}
    try:
        recorded = json.loads((folder / "identity.json").read_text())
    except (OSError, ValueError):
        pass
    if folder.exists() and recorded.get("key") != key:
        stash = out / STASH / (recorded.get("key") or f"unidentified-{name}")
        log.info("eval: %s now names another model; the answers of the previous one are kept in %s",
                 folder, stash)
        shutil.rmtree(stash, ignore_errors=True)
        stash.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(stash)
    if not folder.exists():
        earlier = out / STASH / key
        if earlier.exists():
            earlier.rename(folder)  # evaluated before: its answers come back
        else:
            folder.mkdir(parents=True)
            tmp = folder / f"identity.json.tmp{os.getpid()}"
            tmp.write_text(json.dumps({"key": key, "identity": identity}, indent=1))
            tmp.replace(folder / "identity.json")
    return folder
