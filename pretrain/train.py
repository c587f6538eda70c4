"""`lwm cpt`: continued pretraining on packed trajectory shards, full LM loss (observation
tokens thinned by turn type when prepare wrote a loss mask).

One flat loop: load (or resume), then step / log / save, then evaluate held-out loss and save
the final model as an HF safetensors checkpoint that `transformers` loads.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from lwm import checkpoint
from lwm.modeling import build_model, load_model
from lwm.tokenizer import load_tokenizer
from lwm.tracking import RunPaths, Tracker

log = logging.getLogger("lwm.cpt")


class PackedShards:
    """Fixed-length packed sequences from Megatron .bin/.idx, with the loss mask prepare wrote
    beside them (<prefix>_lossmask) when there is one; batch k depends only on (seed, k)."""

    def __init__(self, prefix: Path, seed: int):
        from megatron.core.datasets.indexed_dataset import IndexedDataset
        if not Path(str(prefix) + ".idx").exists():
            raise FileNotFoundError(f"CPT shards {prefix}.bin/.idx not found: run `lwm prepare` first")
        self.data, self.seed = IndexedDataset(str(prefix)), seed
        mask = Path(str(prefix) + "_lossmask.idx")
        self.mask = IndexedDataset(str(prefix) + "_lossmask") if mask.exists() else None
        self.n = len(self.data)

    def batch(self, k: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows, masks = [], []
        for j in range(k * batch_size, (k + 1) * batch_size):
            epoch, i = divmod(j, self.n)
            row = int(np.random.default_rng(self.seed + epoch).permutation(self.n)[i])
            rows.append(torch.from_numpy(self.data[row].astype(np.int64)))
            if self.mask is not None:
                masks.append(torch.from_numpy(self.mask[row].astype(np.bool_)))
        return torch.stack(rows), (torch.stack(masks) if masks else None)


def labels_for(ids: torch.Tensor, mask: torch.Tensor | None, pad_id: int) -> torch.Tensor:
    labels = ids.clone()
    labels[ids == pad_id] = -100
    if mask is not None:
        labels[~mask] = -100
    return labels


def lr_at(step: int, tcfg) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < tcfg.warmup_steps:
        return (step + 1) / tcfg.warmup_steps
    progress = (step - tcfg.warmup_steps) / max(1, tcfg.max_steps - tcfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor | None, pad_id: int) -> torch.Tensor:
    out = model(input_ids=ids, labels=labels_for(ids, mask, pad_id), output_router_logits=True,
                use_cache=False)
    return out.loss  # includes router_aux_loss_coef * load-balancing loss


@torch.no_grad()
def heldout_loss(model, shards: PackedShards | None, pad_id: int, batch_size: int, max_batches: int = 8):
    if shards is None:
        return None
    model.eval()
    losses = []
    for k in range(min(max_batches, math.ceil(shards.n / batch_size))):
        ids, mask = shards.batch(k, batch_size)
        losses.append(model(input_ids=ids, labels=labels_for(ids, mask, pad_id),
                            use_cache=False).loss.item())
    model.train()
    return float(np.mean(losses))


def initial_model(cfg: DictConfig, tok, paths: RunPaths, save: bool = True):
    """The CPT starting point: cpt.init, else model.path, else a fresh model from config.
    A fresh model is saved as the run's 'init' stage so eval can score the untrained model."""
    if cfg.cpt.init or cfg.model.path:
        return load_model(cfg.cpt.init or cfg.model.path, cfg.model, cfg.backend.dtype)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(tok), tok)
    init_dir = paths.model("init")
    if save and not (init_dir / "model.safetensors").exists():
        model.save_pretrained(init_dir, safe_serialization=True)
        tok.save_pretrained(init_dir)
    return model


def train(cfg: DictConfig, paths: RunPaths) -> dict:
    if cfg.backend.name != "hf":
        from pretrain.backends import train_fn
        return train_fn(cfg.backend.name)(cfg, paths)
    from launch import preempt
    from pretrain.backends import dist as pdist
    from pretrain.backends.hf_parallel import clip_grad_norm, full_state_dict, wrap
    preempt.install()
    # Under torchrun: one data-parallel rank per process. DDP: full replicas, rank 0 writes
    # everything. FSDP2: sharded weights and optimizer, every rank writes its shards.
    rank, world = pdist.init()
    if cfg.backend.strategy not in ("ddp", "fsdp"):
        raise ValueError(f"backend.strategy={cfg.backend.strategy}: the hf CPT loop runs ddp | fsdp")
    strategy = cfg.backend.strategy if world > 1 else "none"  # what ran: recorded in checkpoints
    sharded = strategy == "fsdp"
    main = pdist.is_main()
    tcfg, out = cfg.cpt, paths.stage("cpt")
    prepared = paths.prepared
    tok = load_tokenizer(cfg.data.tokenizer or prepared / "tokenizer")
    shards = PackedShards(prepared / "cpt" / "train", cfg.seed)
    val_prefix = prepared / "cpt" / "heldout"
    val = PackedShards(val_prefix, cfg.seed) if Path(str(val_prefix) + ".idx").exists() else None
    final = paths.model("cpt")
    if (final / "complete").exists() and tcfg.resume != "never":
        log.info("cpt: %s is already trained", final)
        return Tracker.load(out)

    ckpt_dir, step = out / "checkpoints", 0
    resume_from = checkpoint.resolve_resume(tcfg.resume, ckpt_dir)
    if resume_from is None:
        model = initial_model(cfg, tok, paths, save=main)
    elif checkpoint.is_sharded(resume_from):
        # weights arrive in restore(), once the model is sharded the way this run shards it
        model = checkpoint.model_skeleton(resume_from, cfg.model, cfg.backend.dtype)
    else:
        model = load_model(resume_from, cfg.model, cfg.backend.dtype)
    model.train()
    raw = model                      # unwrapped (FSDP2 shards in place: then it is the same module)
    model = wrap(model, strategy)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                            betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, tcfg))
    if resume_from is not None:
        saved = checkpoint.restore(resume_from, opt, sched, model=raw)
        step = saved["step"]
        log.info("cpt: resumed from %s (step %d, written by %s x%s)", resume_from, step,
                 saved.get("strategy", "?"), saved.get("dp_size", "?"))

    tracker = Tracker(cfg, "cpt", out) if main else None
    first_loss = heldout_loss(raw, val, tok.pad_token_id, tcfg.batch_size)
    tokens, t0, losses = 0, time.time(), []
    bar = tqdm(total=tcfg.max_steps, initial=step, desc="cpt", unit="step", disable=not main)
    while step < tcfg.max_steps:
        loss_sum = 0.0
        for micro in range(tcfg.grad_accum):
            ids, mask = pdist.rank_batch(shards, step, micro, tcfg.grad_accum, rank, world,
                                         tcfg.batch_size)
            loss = lm_loss(model, ids, mask, tok.pad_token_id) / tcfg.grad_accum
            loss.backward()
            loss_sum += loss.item()
            tokens += ids.numel() * world
        grad_norm = clip_grad_norm(model, tcfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss_sum)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if main and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            tracker.log({"loss": loss_sum, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                         "tokens_per_s": tokens / (time.time() - t0)}, step=step)
        preempted = preempt.requested() and step < tcfg.max_steps
        if (step % tcfg.save_every == 0 and step < tcfg.max_steps) or preempted:
            extra = {"loss": loss_sum, "dp_size": world, "strategy": strategy}
            if sharded:
                checkpoint.save_sharded(ckpt_dir, step, raw, tok, opt, sched, extra)
            else:
                # DDP keeps full replicas of the optimizer state: rank 0's checkpoint is the job's.
                if main:
                    checkpoint.save(ckpt_dir, step, raw, tok, opt, sched, extra)
                pdist.barrier()
        if preempted:
            # Slurm is about to stop the job: the requeued job resumes from this checkpoint.
            log.info("cpt: preempted at step %d, checkpoint saved", step)
            bar.close()
            return {"steps": step, "preempted": True}
    bar.close()

    last_loss = heldout_loss(raw, val, tok.pad_token_id, tcfg.batch_size)
    weights = full_state_dict(raw)   # collective under FSDP2; None: raw saves its own weights
    if not main:
        pdist.barrier()
        return {"steps": step, "rank": rank}
    raw.save_pretrained(final, state_dict=weights, safe_serialization=True)
    tok.save_pretrained(final)
    (final / "complete").touch()
    pdist.barrier()
    return tracker.finish({"data_parallel": world, "strategy": strategy,
        "steps": step, "resumed_from": str(resume_from) if resume_from else None,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": float(np.mean(losses[-5:])) if losses else None,
        "heldout_loss_before": first_loss, "heldout_loss_after": last_loss,
        "tokens_per_s": tokens / max(time.time() - t0, 1e-9), "checkpoint": str(final)})
