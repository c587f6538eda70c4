"""TRL's trainers (SFT, GRPO) driven by our config: TrainingArguments from the stage's typed config,
with the one optimizer and schedule (lwm.train.optim) and the backend (hf: the Trainer's DDP
under torchrun; deepspeed: a config generated from ours), plus the checks that the Trainer runs
what was asked and the final save.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lwm.train import dist
from lwm.train.optim import spec, trl_optim_args

log = logging.getLogger("lwm.train")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def trainer_args(cfg, tcfg, out: Path, **extra) -> dict:
    """TrainingArguments shared by the TRL stages, from our typed config."""
    return dict(
        output_dir=str(out / "checkpoints"), max_steps=tcfg.max_steps,
        per_device_train_batch_size=tcfg.batch_size, gradient_accumulation_steps=tcfg.grad_accum,
        **trl_optim_args(spec(tcfg)),
        logging_steps=tcfg.log_every, save_steps=tcfg.save_every, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=not _cuda(),
        bf16=cfg.backend.dtype == "bfloat16", report_to=[] if cfg.wandb.mode == "disabled" else ["wandb"],
        run_name=f"{cfg.run_name}-{out.name}", disable_tqdm=False, dataloader_num_workers=0,
        **extra)


def backend_args(cfg, tcfg, world: int, stage: str) -> dict:
    """The TrainingArguments that pick the backend of a TRL stage: hf (the Trainer's DDP under
    torchrun) or DeepSpeed with a config generated from ours. backend=megatron trains SFT through
    the one loop instead (sft/train.py); GRPO has no Megatron path."""
    b = cfg.backend
    if b.name == "megatron":
        raise NotImplementedError(f"backend=megatron is not implemented for `lwm {stage}`: use "
                                  f"backend=deepspeed (ZeRO 0-3) or backend=hf for {stage}")
    if b.name == "hf":
        if b.strategy != "ddp":
            # The Trainer's FSDP on CPU silently falls back to DDP (STACK.md): refuse it by name.
            raise NotImplementedError(f"{stage} with backend=hf trains DDP only, not backend.strategy="
                                      f"{b.strategy}; shard with backend=deepspeed backend.deepspeed.zero_stage=3")
        return {}
    if b.name != "deepspeed":
        raise ValueError(f"backend.name = '{b.name}': expected hf, deepspeed or megatron")
    d = b.deepspeed
    if d.zero_stage == 3 and not d.stage3_gather_16bit_weights_on_model_save:
        # Without the gather, Trainer.save_model writes a placeholder model and only warns.
        raise ValueError(f"{stage} with backend.deepspeed.zero_stage=3 needs "
                         "backend.deepspeed.stage3_gather_16bit_weights_on_model_save=true")
    from lwm.train.engines.deepspeed import ds_config
    # No "optimizer"/"scheduler" in the DeepSpeed config: the Trainer builds both from the
    # arguments above, the same as backend=hf, and DeepSpeed shards that optimizer.
    ds = ds_config(b, tcfg, world)
    # DeepSpeed needs a process group even for one rank; without torchrun it would look for MPI.
    dist.init(always=True)
    # deepspeed.comm must know the world before any model is built under ZeRO-3 (GRPO's reference
    # model is, via zero.Init): left to the Trainer, it counts world 1 there and the batch check fails.
    import deepspeed
    deepspeed.init_distributed(dist_backend="nccl" if _cuda() else "gloo")
    return {"deepspeed": ds, "gradient_checkpointing": d.activation_checkpointing}


def check_world(trainer, world: int, backend: str, stage: str) -> None:
    """The Trainer can silently run as world 1 while torchrun started several ranks (each then
    trains its own replica): refuse that."""
    got = trainer.args.world_size
    if got != world:
        raise RuntimeError(f"{stage}: the Trainer sees world size {got}, torchrun started WORLD_SIZE={world}; "
                           "the ranks would train unsynchronised replicas")
    if backend == "deepspeed" and not trainer.is_deepspeed_enabled:
        raise RuntimeError(f"{stage}: backend=deepspeed but the Trainer did not enable DeepSpeed")


def resume_arg(resume: str, ckpt_dir: Path) -> str | bool | None:
    """Our resume setting as the Trainer's: auto resumes the last checkpoint if there is one."""
    if resume == "never":
        return None
    if resume == "auto":
        return True if any(ckpt_dir.glob("checkpoint-*")) else None
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint folder; pass a checkpoint-N folder of "
                                f"{ckpt_dir}, auto or never")
    return resume


def save_final(trainer, tok, final: Path) -> None:
    """Every rank calls this (ZeRO-3 gathers the weights collectively); rank 0 writes."""
    trainer.model.config.output_router_logits = False
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tok.save_pretrained(final)
        (final / "complete").touch()
