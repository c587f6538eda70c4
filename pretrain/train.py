"""`lwm cpt`: continued pretraining on packed trajectory shards, full LM loss (observation
tokens thinned by turn type when prepare wrote a loss mask).

The stage names its data and its start; the one training loop (lwm.train.loop) trains it on the
engine `backend.name` selects and ends with an HF safetensors checkpoint in <run>/cpt/final.
"""

from __future__ import annotations

from omegaconf import DictConfig

from lwm.tokenizer import load_tokenizer
from lwm.tracking import RunPaths
from lwm.train import loop
from lwm.train.data import PackedShards


def train(cfg: DictConfig, paths: RunPaths) -> dict:
    prepared = paths.prepared
    tok = load_tokenizer(cfg.data.tokenizer or prepared / "tokenizer")
    job = loop.Job(
        stage="cpt", tcfg=cfg.cpt, tok=tok,
        train=PackedShards(prepared / "cpt" / "train", cfg.seed, tok.pad_token_id),
        heldout=PackedShards.optional(prepared / "cpt" / "heldout", cfg.seed, tok.pad_token_id),
        seq_len=cfg.data.seq_len, init=cfg.cpt.init or cfg.model.path or None)
    return loop.run(cfg, paths, job)
