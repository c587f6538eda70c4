"""HF checkpoints in and out of Megatron distributed checkpoints, in one process.

A Megatron run starts from a distributed checkpoint and ends in one; the rest of the pipeline
(SFT, RL, eval, serve) reads HF safetensors. Both directions go through a one-rank, unsharded
Megatron model and `dist_checkpointing`, which maps the full tensors onto whatever TP/PP/EP
layout later loads them (and gathers any layout back), so no code here knows about shards:
- import: HF model (cpt.init, model.path, or a fresh one from config) -> lwm.convert ->
  one-rank GPTModel -> dist checkpoint;
- export: dist checkpoint -> one-rank GPTModel -> lwm.convert -> HF safetensors + tokenizer.
The one-rank model uses Megatron's torch-only layer spec; its checkpoint keys are the ones
Transformer Engine layers use, so GPU runs with TE load and write the same checkpoints.

Run by rank 0 of a training job as its own process (`python -m pretrain.backends.megatron_ckpt
import|export CONFIG.yaml SRC DST`), so the job's parallel state is left alone.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

log = logging.getLogger("lwm.cpt.megatron")
_JOB_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _one_rank_model(cfg, vocab: int):
    from pretrain.backends import dist as pdist
    from pretrain.backends import megatron as mg
    pdist.init(always=True)
    b = copy.deepcopy(cfg.backend)
    m = b.megatron
    m.tensor_parallel = m.pipeline_parallel = m.context_parallel = 1
    m.expert_parallel = m.expert_tensor_parallel = 1
    m.virtual_pipeline_parallel = 0
    m.sequence_parallel, m.grouped_gemm = False, False
    mg.initialize_parallel(b, cfg.seed)
    return mg.build_model(cfg.model, b, vocab, cfg.data.seq_len, use_te=False, cpu_init=True)


def _layout(cfg):
    from lwm.convert import layout_for_model
    return layout_for_model(cfg.model)


def import_hf(cfg, src: Path | None, dst: Path, vocab: int, paths) -> None:
    """Write the run's starting weights (HF) as a Megatron dist checkpoint at dst."""
    from megatron.core import dist_checkpointing

    from lwm.convert import hf_to_megatron
    from lwm.modeling import load_model
    from lwm.tokenizer import load_tokenizer
    from pretrain.train import initial_model
    if src is not None:
        hf = load_model(src, cfg.model, "float32")
    else:  # a fresh model from config, saved as the run's 'init' stage as the hf loop does
        hf = initial_model(cfg, load_tokenizer(cfg.data.tokenizer or paths.prepared / "tokenizer"), paths)
    model = _one_rank_model(cfg, vocab)
    state = hf_to_megatron({k: v.float() for k, v in hf.state_dict().items()}, _layout(cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"megatron import from {src or 'a fresh model'}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(tmp))
    tmp.rename(dst)


def export_hf(cfg, src: Path, dst: Path, vocab: int, tokenizer_dir: Path) -> None:
    """Gather the dist checkpoint at src into an HF safetensors checkpoint at dst."""
    from megatron.core import dist_checkpointing

    from lwm.convert import megatron_to_hf
    from lwm.modeling import build_model as build_hf
    from lwm.tokenizer import load_tokenizer
    model = _one_rank_model(cfg, vocab)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(src))
    model.load_state_dict(loaded["model"], strict=False)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    tok = load_tokenizer(tokenizer_dir)
    hf = build_hf(cfg.model, vocab, tok)
    result = hf.load_state_dict(megatron_to_hf(state, _layout(cfg)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"megatron export of {src}: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    if cfg.backend.dtype == "bfloat16":
        hf = hf.to(torch.bfloat16)
    hf.config.output_router_logits = False
    hf.save_pretrained(dst, safe_serialization=True)
    tok.save_pretrained(dst)
    (dst / "complete").touch()


def run_in_own_process(direction: str, cfg, src, dst: Path, tokenizer: str = "") -> None:
    """import/export in a fresh one-rank process (the caller's process group stays untouched)."""
    from omegaconf import OmegaConf
    dst.parent.mkdir(parents=True, exist_ok=True)
    conf = dst.parent / f".megatron_{direction}.yaml"
    OmegaConf.save(cfg, conf, resolve=True)  # run_dir is a Hydra interpolation
    # none of the job's launcher variables: with TORCHELASTIC_USE_AGENT_STORE the child's own
    # one-rank group would wait on the job's rendezvous store
    env = {k: v for k, v in os.environ.items()
           if k not in _JOB_VARS and not k.startswith(("TORCHELASTIC_", "GROUP_", "ROLE_"))}
    cmd = [sys.executable, "-m", "pretrain.backends.megatron_ckpt", direction, str(conf), str(src or ""), str(dst)]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"megatron {direction} ({' '.join(cmd)}) failed:\n{res.stderr[-4000:]}")


def main(argv=None) -> None:
    from omegaconf import OmegaConf

    from lwm.tokenizer import load_tokenizer
    from lwm.tracking import RunPaths
    ap = argparse.ArgumentParser(description="HF <-> Megatron dist checkpoints (one process)")
    ap.add_argument("direction", choices=["import", "export"])
    ap.add_argument("config", type=Path, help="the run's resolved config (YAML)")
    ap.add_argument("src")
    ap.add_argument("dst", type=Path)
    ap.add_argument("--tokenizer", default="", help="tokenizer saved with an export (default: the run's)")
    a = ap.parse_args(argv)
    cfg = OmegaConf.load(a.config)
    paths = RunPaths(Path(cfg.run_dir))
    tok_dir = Path(a.tokenizer or cfg.data.tokenizer or paths.prepared / "tokenizer")
    vocab = cfg.model.vocab_size or len(load_tokenizer(tok_dir))
    if a.direction == "import":
        import_hf(cfg, Path(a.src) if a.src else None, a.dst, vocab, paths)
    else:
        export_hf(cfg, Path(a.src), a.dst, vocab, tok_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
