"""HF checkpoints in and out of Megatron distributed checkpoints, in one process.

A Megatron run starts from a distributed checkpoint and ends in one; the rest of the pipeline
(SFT, RL, eval, serve) reads HF safetensors. Both directions go through a one-rank, unsharded
Megatron model and `dist_checkpointing`, which maps the full tensors onto whatever TP/PP/EP
layout later loads them (and gathers any layout back), so no code here knows about shards:
- import: HF checkpoint (the job's start) -> lwm.models.convert -> one-rank GPTModel -> dist checkpoint;
- export: dist checkpoint -> one-rank GPTModel -> lwm.models.convert -> HF safetensors + tokenizer.
The one-rank model uses Megatron's torch-only layer spec; the checkpoint keys are always the
ones Transformer Engine layers use (each family's torch-only spec maps its norms onto them, and
lwm.models.megatron_names applies the same map to the converted tensors), so GPU runs with TE
load and write the same checkpoints. An HF checkpoint with multi-token-prediction weights is
refused unless --drop-mtp, recorded in the dist checkpoint's `lwm_import.json`.

Run by rank 0 of a training job as its own process (`python -m lwm.models.megatron_ckpt
import|export CONFIG.yaml SRC DST`), so the job's parallel state is left alone. It needs neither
a GPU nor Transformer Engine: on a machine without CUDA it runs on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

log = logging.getLogger("lwm.cpt.megatron")
_JOB_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _one_rank_model(cfg, vocab: int, meta: bool):
    """The unsharded model in the run's dtype; on the meta device (no memory) when its weights
    are about to be assigned or allocated anyway."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from lwm.models.megatron import build_model
    from lwm.train import dist
    dist.init(always=True)
    b = copy.deepcopy(cfg.backend)
    m = b.megatron
    m.tensor_parallel = m.pipeline_parallel = m.context_parallel = 1
    m.expert_parallel = m.expert_tensor_parallel = 1
    m.sequence_parallel, m.grouped_gemm = False, False
    ps.initialize_model_parallel()  # every size 1
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    with torch.device("meta") if meta else contextlib.nullcontext():
        return build_model(cfg.model, b, vocab, cfg.data.seq_len, use_te=False, cpu_init=True)


def _layout(cfg):
    from lwm.models.convert import layout_for_model
    return layout_for_model(cfg.model)


def _unfilled(model) -> list[str]:
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def import_hf(cfg, src: Path, dst: Path, vocab: int, drop_mtp: bool = False) -> None:
    """Write the run's starting weights (HF, at src) as a Megatron dist checkpoint at dst. The HF
    tensors are read and converted a layer at a time and become the model's weights as they
    are (no copy), so the peak is about one copy of the model in the run's dtype."""
    from megatron.core import dist_checkpointing

    from lwm.models.convert import check_mtp, iter_hf_to_megatron
    from lwm.models.hf import DTYPES
    from lwm.models.megatron_names import checkpoint_names
    from lwm.models.safetensors_io import SafetensorsDir
    hf = SafetensorsDir(src, DTYPES[cfg.backend.dtype])
    dropped = check_mtp(hf, drop_mtp)
    model = _one_rank_model(cfg, vocab, meta=True)
    own = {saved: key for key, saved in checkpoint_names(model).items()}  # TE names -> this model's
    unexpected = []
    for piece in iter_hf_to_megatron(hf, _layout(cfg), drop_mtp=drop_mtp):
        piece = {own.get(k, k): v for k, v in piece.items()}
        unexpected += model.load_state_dict(piece, strict=False, assign=True).unexpected_keys
    missing = [k for k in _unfilled(model) if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"megatron import from {src}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(tmp))
    if dropped:
        (tmp / "lwm_import.json").write_text(json.dumps(
            {"source": str(src), "dropped_mtp": dropped,
             "why": "multi-token-prediction weights are not converted (--drop-mtp)"}, indent=1))
    tmp.rename(dst)


def export_hf(cfg, src: Path, dst: Path, vocab: int, tokenizer_dir: Path,
              max_shard_bytes: int = 5 * 2**30) -> None:
    """Gather the dist checkpoint at src into an HF checkpoint at dst (safetensors shards in the
    on-disk layout transformers writes, one tensor per expert), converted and written a layer
    at a time next to the one gathered copy of the model."""
    from megatron.core import dist_checkpointing
    from transformers import GenerationConfig

    from lwm.models.convert import iter_megatron_to_hf
    from lwm.models.hf import build_config
    from lwm.models.megatron_names import to_checkpoint_names
    from lwm.models.safetensors_io import ShardedSafetensorsWriter
    from lwm.tokenizer import load_tokenizer
    model = _one_rank_model(cfg, vocab, meta=True).to_empty(device="cpu")  # allocated, not initialised
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(src))
    model.load_state_dict(loaded["model"], strict=False)
    del loaded
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = ShardedSafetensorsWriter(tmp, max_shard_bytes)
    sd = to_checkpoint_names(model, model.state_dict())
    for piece in iter_megatron_to_hf(sd, _layout(cfg), per_expert=True):
        if cfg.model.tie_word_embeddings:  # transformers re-ties lm_head to the embedding on load
            piece.pop("lm_head.weight", None)
        writer.add(piece)
    writer.close()
    tok = load_tokenizer(tokenizer_dir)
    config, cls = build_config(cfg.model, vocab, tok)
    config.dtype, config.architectures = cfg.backend.dtype, [cls.__name__]
    config.save_pretrained(tmp)
    GenerationConfig.from_model_config(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


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
    cmd = [sys.executable, "-m", "lwm.models.megatron_ckpt", direction, str(conf), str(src), str(dst)]
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
    ap.add_argument("--drop-mtp", action="store_true",
                    help="import: leave out multi-token-prediction weights (recorded in DST/lwm_import.json)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        from lwm.models import megatron_cpu  # Megatron's CUDA-only calls, mapped onto the CPU
        megatron_cpu.enable()
    cfg = OmegaConf.load(a.config)
    paths = RunPaths(Path(cfg.run_dir))
    tok_dir = Path(a.tokenizer or cfg.data.tokenizer or paths.prepared / "tokenizer")
    vocab = cfg.model.vocab_size or len(load_tokenizer(tok_dir))
    if a.direction == "import":
        import_hf(cfg, Path(a.src), a.dst, vocab, drop_mtp=a.drop_mtp)
    else:
        export_hf(cfg, Path(a.src), a.dst, vocab, tok_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
