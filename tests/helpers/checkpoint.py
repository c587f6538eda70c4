"""Checkpoints in tests: a tiny one built from config, and the final weights of runs compared."""

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


def final_weights(run: Path, stage: str = "cpt") -> dict:
    """The tensors of a stage's final model in a run folder."""
    from safetensors.torch import load_file
    return load_file(run / stage / "final" / "model.safetensors")


def assert_same_run(a: Path, b: Path, stage: str = "cpt", atol: float = 1e-6) -> None:
    """Two runs ended in the same weights: every tensor, to `atol` (a resumed run against an
    uninterrupted one: the same arithmetic, up to float noise)."""
    wa, wb = final_weights(a, stage), final_weights(b, stage)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=name)
