"""Fingerprints of what made an output: files, checkpoints and tokenizers.

A fingerprint is the hash of content, never of a path or a folder name: two checkpoints both
called `final` differ, the same weights copied elsewhere agree. Hashing a large checkpoint takes
a while, so a checkpoint's fingerprint is cached beside it (`.lwm_fingerprint.json`), keyed by
every file's size and modification time: any rewrite invalidates it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE = ".lwm_fingerprint.json"
# What decides a checkpoint's behaviour: weights, architecture, tokenizer, generation defaults.
CHECKPOINT_FILES = ("*.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def flat(value, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": value} (what configs are compared and labelled by)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def digest(value) -> str:
    """The fingerprint of a JSON-able value (a config subtree, a dict of fingerprints)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted({p for pattern in CHECKPOINT_FILES for p in folder.glob(pattern) if p.is_file()})


def checkpoint_fingerprint(folder: str | Path) -> str:
    """The content fingerprint of an HF checkpoint folder (weights, config, tokenizer)."""
    folder = Path(folder)
    files = _files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no checkpoint files ({', '.join(CHECKPOINT_FILES)})")
    stamp = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    cache = folder / CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return cached["fingerprint"]
    except (OSError, ValueError, KeyError):
        pass
    fingerprint = digest({p.name: file_digest(p) for p in files})
    try:
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "files": stamp}))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only checkpoint: hashed again next time
    return fingerprint


def tokenizer_fingerprint(folder: str | Path) -> str:
    """What decides how text becomes ids: the vocabulary, merges and added tokens
    (tokenizer.json) and which tokens are eos/pad/bos/unk. Not the rest of tokenizer_config.json,
    which transformers rewrites on every save."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json (a fast tokenizer is expected)")
    roles = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
        roles = {k: str(config.get(k)) for k in ("eos_token", "pad_token", "bos_token", "unk_token")}
    return digest({"tokenizer.json": file_digest(folder / "tokenizer.json"), "roles": roles})
