"""`lwm cpt`: continued pretraining on packed trajectory shards, full LM loss (observation
tokens thinned by turn type when prepare wrote a loss mask).

The stage names its data and its start; the one training loop (lwm.train.loop) trains it on the
engine `backend.name` selects and ends with an HF safetensors checkpoint in <run>/cpt/final.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lwm.identity import tokenizer_fingerprint
from lwm.tokenizer import load_tokenizer
from lwm.tracking import RunPaths
from lwm.train import loop
from lwm.train.data import PackedShards


def check_tokenizer(data_tokenizer: Path, init: str | None) -> None:
    """The shards hold ids of `data_tokenizer`; a checkpoint trained on another vocabulary would
    read them as other tokens, silently. Refuse that, naming both."""
    if not init or not (Path(init) / "tokenizer.json").exists():
        return
    if tokenizer_fingerprint(data_tokenizer) != tokenizer_fingerprint(init):
        raise ValueError(f"cpt: the prepared shards were tokenized with {data_tokenizer}, but the starting "
                         f"checkpoint {init} has another tokenizer; prepare again with its tokenizer "
                         f"(data.tokenizer={init}, or leave data.tokenizer empty: prepare then uses the "
                         "starting checkpoint's) under another run_name=")


def train(cfg: DictConfig, paths: RunPaths) -> dict:
    prepared = paths.prepared
    data_tokenizer = Path(cfg.data.tokenizer) if cfg.data.tokenizer else prepared / "tokenizer"
    init = cfg.cpt.init or cfg.model.path or None
    check_tokenizer(data_tokenizer, init)
    tok = load_tokenizer(data_tokenizer)
    job = loop.Job(
        stage="cpt", tcfg=cfg.cpt, tok=tok,
        train=PackedShards(prepared / "cpt" / "train", cfg.seed, tok.pad_token_id),
        heldout=PackedShards.optional(prepared / "cpt" / "heldout", cfg.seed, tok.pad_token_id),
        seq_len=cfg.data.seq_len, init=init)
    return loop.run(cfg, paths, job)
