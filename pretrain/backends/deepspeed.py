"""backend=deepspeed: the CPT loop on a DeepSpeed engine. Its JSON config is generated from ours
(`ds_config`), never written by hand, so batch size, accumulation and clipping stay one knob each.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from lwm.parallel_config import parallel_plan
from pretrain.backends import dist as pdist

log = logging.getLogger("lwm.cpt.deepspeed")

_OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def ds_config(bcfg, tcfg, world_size: int, client_optimizer: bool = False) -> dict:
    """DeepSpeed's config dict for `world_size` ranks. With ep_size > 1 DeepSpeed still counts the
    data-parallel size as the whole world for the batch arithmetic. `client_optimizer`: the caller
    hands DeepSpeed a torch optimizer (the HF Trainer does), so the config has no "optimizer"."""
    d = bcfg.deepspeed
    if d.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"backend.deepspeed.zero_stage = {d.zero_stage}: expected 0, 1, 2 or 3")
    for name in ("offload_optimizer", "offload_param"):
        if getattr(d, name) not in _OFFLOAD_DEVICES:
            raise ValueError(f"backend.deepspeed.{name} = '{getattr(d, name)}': none | cpu | nvme")
    if d.offload_optimizer != "none" and d.zero_stage == 0:
        raise ValueError("backend.deepspeed.offload_optimizer needs zero_stage >= 1")
    if d.offload_param != "none" and d.zero_stage != 3:
        raise ValueError("backend.deepspeed.offload_param needs zero_stage = 3")
    if bcfg.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"backend.dtype = '{bcfg.dtype}': float32 | bfloat16")
    zero: dict = {"stage": d.zero_stage}
    if d.zero_stage >= 1:
        zero.update(overlap_comm=d.overlap_comm, contiguous_gradients=d.contiguous_gradients,
                    reduce_bucket_size=d.reduce_bucket_size)
    if d.zero_stage in (1, 2):
        zero.update(allgather_bucket_size=d.allgather_bucket_size)
    if d.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=d.stage3_prefetch_bucket_size,
                    stage3_param_persistence_threshold=d.stage3_param_persistence_threshold,
                    stage3_gather_16bit_weights_on_model_save=d.stage3_gather_16bit_weights_on_model_save)
    for name in ("offload_optimizer", "offload_param"):
        device = getattr(d, name)
        if device != "none":
            zero[name] = {"device": device, "pin_memory": d.pin_memory}
            if device == "nvme":
                zero[name]["nvme_path"] = d.nvme_path
    cfg = {
        "train_micro_batch_size_per_gpu": tcfg.batch_size,
        "gradient_accumulation_steps": tcfg.grad_accum,
        "train_batch_size": tcfg.batch_size * tcfg.grad_accum * world_size,
        "gradient_clipping": tcfg.max_grad_norm,
        "bf16": {"enabled": bcfg.dtype == "bfloat16"},
        "zero_optimization": zero,
        # torch_adam: torch's AdamW instead of FusedAdam / DeepSpeedCPUAdam, which JIT-compile.
        "optimizer": {"type": "AdamW", "params": {
            "lr": tcfg.lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": tcfg.weight_decay,
            "torch_adam": d.torch_adam}},
        "steps_per_print": 10 ** 9,  # we log ourselves
        "wall_clock_breakdown": d.wall_clock_breakdown,
    }
    if client_optimizer:
        del cfg["optimizer"]
    if (d.torch_adam or client_optimizer) and d.offload_optimizer != "none":
        cfg["zero_force_ds_cpu_optimizer"] = False
    if d.activation_checkpointing:
        cfg["activation_checkpointing"] = {"partition_activations": d.zero_stage == 3,
                                           "contiguous_memory_optimization": False}
    return cfg


def initialize(model, cfg, world_size: int):
    """A DeepSpeed engine around `model`, with our warmup+cosine schedule."""
    import deepspeed

    from pretrain.train import lr_at
    tcfg = cfg.cpt
    if cfg.backend.deepspeed.activation_checkpointing:
        model.gradient_checkpointing_enable()
    engine, _, _, sched = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config(cfg.backend, tcfg, world_size),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, tcfg)))
    return engine, sched


def train(cfg, paths) -> dict:
    import deepspeed

    from lwm.tokenizer import load_tokenizer
    from lwm.tracking import Tracker
    from pretrain.train import PackedShards, heldout_loss, initial_model, lm_loss

    tcfg, out = cfg.cpt, paths.stage("cpt")
    rank, world = pdist.init(always=True)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    plan = parallel_plan(cfg.model, cfg.backend, world)
    if plan.ep > 1:
        raise NotImplementedError("backend.deepspeed.ep_size > 1 needs DeepSpeed-MoE layers in the model; "
                                  "the HF Qwen3-MoE blocks train with ep_size 1 (use backend=megatron for EP)")
    log.info("deepspeed: %s, ZeRO-%d", plan.describe(), cfg.backend.deepspeed.zero_stage)
    prepared = paths.prepared
    tok = load_tokenizer(cfg.data.tokenizer or prepared / "tokenizer")
    shards = PackedShards(prepared / "cpt" / "train", cfg.seed)
    val_prefix = prepared / "cpt" / "heldout"
    val = PackedShards(val_prefix, cfg.seed) if val_prefix.with_suffix(".idx").exists() else None
    final, ckpt_dir = paths.model("cpt"), out / "checkpoints_deepspeed"
    if (final / "complete").exists() and tcfg.resume != "never":
        return Tracker.load(out)

    model = initial_model(cfg, tok, paths)
    engine, sched = initialize(model, cfg, world)
    step = 0
    if tcfg.resume != "never" and (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        pdist.check_resume_dp(client or {}, plan.dp, "convert it with DeepSpeed's ds_to_universal.py "
                              "and resume with a universal checkpoint")
        step = int(client["step"])
    tracker = Tracker(cfg, "cpt", out) if rank == 0 else None
    dev = engine.device
    tokens, t0, losses = 0, time.time(), []
    while step < tcfg.max_steps:
        loss_sum = 0.0
        for micro in range(tcfg.grad_accum):
            ids, mask = pdist.rank_batch(shards, step, micro, tcfg.grad_accum, rank, plan.dp, tcfg.batch_size)
            ids = ids.to(dev)
            loss = lm_loss(engine, ids, None if mask is None else mask.to(dev), tok.pad_token_id)
            engine.backward(loss)  # DeepSpeed scales by 1/grad_accum itself
            engine.step()          # a no-op except at the accumulation boundary
            loss_sum += loss.item() / tcfg.grad_accum
            tokens += ids.numel() * world
        step += 1
        losses.append(loss_sum)
        if tracker and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            tracker.log({"loss": loss_sum, "lr": sched.get_last_lr()[0],
                         "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                         "tokens_per_s": tokens / (time.time() - t0)}, step=step)
        if step % tcfg.save_every == 0 and step < tcfg.max_steps:
            engine.save_checkpoint(str(ckpt_dir), tag=f"step_{step:07d}",
                                   client_state={"step": step, "dp_size": plan.dp})
    held = heldout_loss(engine.module, val, tok.pad_token_id, tcfg.batch_size) if val else None
    _save_hf(engine, cfg, final, tok)
    if tracker is None:
        return {}
    return tracker.finish({"steps": step, "backend": "deepspeed", "layout": plan.describe(),
                           "train_loss_first": losses[0] if losses else None,
                           "train_loss_last": float(np.mean(losses[-5:])) if losses else None,
                           "heldout_loss_after": held,
                           "tokens_per_s": tokens / max(time.time() - t0, 1e-9), "checkpoint": str(final)})


def _save_hf(engine, cfg, final, tok) -> None:
    """The trained model as an HF checkpoint; under ZeRO-3 the shards are gathered first."""
    if cfg.backend.deepspeed.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    if pdist.is_main():
        engine.module.save_pretrained(final, state_dict=state, safe_serialization=True)
        tok.save_pretrained(final)
        (final / "complete").touch()
    pdist.barrier()
