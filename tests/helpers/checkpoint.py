"""A tiny checkpoint built from config, for tests that generate with a real model."""

from __future__ import annotations

from pathlib import Path

import torch

from lwm.models.hf import build_model
from lwm.tokenizer import load_tokenizer
from tests.conftest import make_cfg


def save_tiny_checkpoint(prepared_run: Path, out: Path) -> Path:
    """A tiny MoE built from config with the prepared run's tokenizer, saved as a checkpoint."""
    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    cfg = make_cfg(prepared_run)
    tok = load_tokenizer(prepared_run / "prepare" / "tokenizer")
    model = build_model(cfg.model, len(tok), tok)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
