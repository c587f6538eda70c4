"""`lwm sft`: next-state prediction with TRL's SFTTrainer, loss on the target observation only.

Long samples lose their oldest history turns first (system prompt, initial state and target
stay); samples are packed padding-free so no attention or loss crosses their boundaries.

With a teacher configured (sft.teacher), each target gets the reasoning of the teacher's best
verified candidate before the real observation (sft/teacher.py); without one, SFT trains on the
observation alone.

Samples are (history, action -> observation) conversations rendered by `lwm.render`; they are
tokenized here with `lwm.tokenizer.encode_chat`, which builds the labels where the text is
rendered, and handed to TRL pre-tokenized so the loss mask is ours, not re-derived.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from omegaconf import DictConfig
from tqdm import tqdm
from trl import SFTConfig, SFTTrainer

from lwm.domains import extract_observation
from lwm.modeling import load_model
from lwm.render import target
from lwm.tokenizer import drop_oldest_turn, encode_chat, load_tokenizer
from lwm.tracking import RunPaths, Tracker
from pretrain.backends import dist as pdist
from sft.teacher import on_rank0, reasoning_targets

log = logging.getLogger("lwm.sft")


def fit_to_length(tok, messages: list[dict], max_length: int, train_history: bool):
    """Encode a sample, dropping the oldest history turns until it fits max_length.

    The system prompt, the target and turn 1 (which carries the initial state) are kept as long
    as any other history turn can go instead. Returns (ids, labels, dropped turns) or None.
    """
    msgs, dropped = list(messages), 0
    while True:
        ids, labels = encode_chat(tok, msgs, train_history)
        if len(ids) <= max_length:
            return ids, labels, dropped
        msgs = drop_oldest_turn(msgs, tail=2)  # keep turn t's action and the target
        if msgs is None:
            return None
        dropped += 1


def with_reasoning(rec: dict, reasoning: dict[str, str]) -> list[dict]:
    """The sample's messages; its target carries the accepted teacher reasoning, if any, before
    the real observation."""
    thought = reasoning.get(f"{rec['id']}#{rec['copy']}")
    if not thought:
        return rec["prompt"] + rec["completion"]
    observation = extract_observation(rec["completion"][-1]["content"])[0]
    return rec["prompt"] + [{"role": "assistant", "content": target(observation, thought)}]


def tokenized_samples(tok, records, max_length: int, train_history: bool,
                      reasoning: dict[str, str] | None = None) -> tuple[datasets.Dataset, dict]:
    """input_ids/labels per sample, truncated from the oldest history turns to max_length;
    samples that cannot fit even then are skipped. Both are counted. `records` are prepared
    SFT rows (or the shard paths holding them)."""
    if isinstance(records, list) and records and isinstance(records[0], str):
        records = datasets.Dataset.from_parquet(records)
    reasoning = reasoning or {}
    rows, skipped, truncated, dropped_turns, trained_tokens, reasoned = [], 0, 0, 0, 0, 0
    for rec in tqdm(records, desc="tokenize sft", unit="sample"):
        messages = with_reasoning(rec, reasoning)
        fitted = fit_to_length(tok, messages, max_length, train_history)
        if fitted is None:
            skipped += 1
            continue
        ids, labels, dropped = fitted
        truncated += dropped > 0
        dropped_turns += dropped
        rows.append({"input_ids": ids, "labels": labels})
        reasoned += bool(reasoning.get(f"{rec['id']}#{rec['copy']}"))
        trained_tokens += sum(l != -100 for l in labels)
    if not rows:
        raise ValueError(f"no SFT sample fits sft.max_length={max_length}")
    stats = {"samples": len(rows), "with_reasoning": reasoned, "skipped_too_long": skipped,
             "truncated": truncated, "history_turns_dropped": dropped_turns, "trained_tokens": trained_tokens}
    return datasets.Dataset.from_list(rows), stats


def trainer_args(cfg: DictConfig, tcfg, out: Path, **extra) -> dict:
    """TrainingArguments shared by the TRL stages, from our typed config."""
    return dict(
        output_dir=str(out / "checkpoints"), max_steps=tcfg.max_steps, learning_rate=tcfg.lr,
        weight_decay=tcfg.weight_decay, warmup_steps=tcfg.warmup_steps,
        lr_scheduler_type="cosine", per_device_train_batch_size=tcfg.batch_size,
        gradient_accumulation_steps=tcfg.grad_accum, max_grad_norm=tcfg.max_grad_norm,
        logging_steps=tcfg.log_every, save_steps=tcfg.save_every, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=not _cuda(),
        bf16=cfg.backend.dtype == "bfloat16", report_to=[] if cfg.wandb.mode == "disabled" else ["wandb"],
        run_name=f"{cfg.run_name}-{out.name}", disable_tqdm=False, dataloader_num_workers=0,
        **extra)


def backend_args(cfg: DictConfig, tcfg, world: int, stage: str = "sft") -> dict:
    """The TrainingArguments that pick the backend of a TRL stage (`lwm sft`, `lwm rl`): hf (the
    Trainer's DDP under torchrun) or DeepSpeed with a config generated from ours."""
    b = cfg.backend
    if b.name == "megatron":
        raise NotImplementedError(f"backend=megatron is not implemented for `lwm {stage}` yet: use "
                                  f"backend=deepspeed (ZeRO 0-3) or backend=hf for {stage}")
    if b.name == "hf":
        if b.strategy != "ddp":
            # The Trainer's FSDP on CPU silently falls back to DDP (STACK.md): refuse it by name.
            raise NotImplementedError(f"{stage} with backend=hf trains DDP only, not backend.strategy="
                                      f"{b.strategy}; shard with backend=deepspeed backend.deepspeed.zero_stage=3")
        return {}
    d = b.deepspeed
    if d.zero_stage == 3 and not d.stage3_gather_16bit_weights_on_model_save:
        # Without the gather, Trainer.save_model writes a placeholder model and only warns.
        raise ValueError(f"{stage} with backend.deepspeed.zero_stage=3 needs "
                         "backend.deepspeed.stage3_gather_16bit_weights_on_model_save=true")
    if d.ep_size > 1:
        raise NotImplementedError("backend.deepspeed.ep_size > 1 needs DeepSpeed-MoE layers; "
                                  "the HF MoE blocks train with ep_size 1")
    from pretrain.backends.deepspeed import ds_config
    # The optimizer and schedule stay the Trainer's (the AdamW and warmup+cosine of backend=hf),
    # so switching backend changes the parallelism, not the optimisation. A DeepSpeed "optimizer"
    # section would replace them, and the Trainer refuses one whose betas differ from its own.
    ds = ds_config(b, tcfg, world, client_optimizer=True)
    # DeepSpeed needs a process group even for one rank; without torchrun it would look for MPI.
    pdist.init(always=True)
    # deepspeed.comm must know the world before any model is built under ZeRO-3 (GRPO's reference
    # model is, via zero.Init): left to the Trainer, it counts world 1 there and the batch check fails.
    import deepspeed
    deepspeed.init_distributed(dist_backend="nccl" if _cuda() else "gloo")
    return {"deepspeed": ds, "gradient_checkpointing": d.activation_checkpointing}


def check_world(trainer, world: int, backend: str, stage: str = "sft") -> None:
    """The Trainer can silently run as world 1 while torchrun started several ranks (each then
    trains its own replica): refuse that."""
    got = trainer.args.world_size
    if got != world:
        raise RuntimeError(f"{stage}: the Trainer sees world size {got}, torchrun started WORLD_SIZE={world}; "
                           "the ranks would train unsynchronised replicas")
    if backend == "deepspeed" and not trainer.is_deepspeed_enabled:
        raise RuntimeError(f"{stage}: backend=deepspeed but the Trainer did not enable DeepSpeed")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def resume_arg(resume: str, ckpt_dir: Path) -> str | bool | None:
    """Map our resume setting onto Trainer's: auto resumes the last checkpoint if there is one."""
    if resume == "never":
        return None
    if resume == "auto":
        return True if any(ckpt_dir.glob("checkpoint-*")) else None
    return resume


def save_final(trainer, tok, final: Path) -> None:
    """Every rank calls this (ZeRO-3 gathers the weights collectively); rank 0 writes."""
    trainer.model.config.output_router_logits = False
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tok.save_pretrained(final)
        (final / "complete").touch()


def teacher_reasoning(cfg: DictConfig, records, out: Path) -> tuple[dict[str, str], dict | None]:
    """The accepted teacher reasoning per sample ({} and None without a teacher). Rank 0 asks
    the teacher and writes its cache; the other ranks get the same targets."""
    t = cfg.sft.teacher
    if not (t.base_url or t.path):
        return {}, None
    reasoning, stats = on_rank0(lambda: reasoning_targets(t, list(records), out / "teacher", cfg.seed,
                                                         cfg.model, cfg.backend.dtype))
    log.info("sft: teacher reasoning accepted for %d of %d queries", stats["accepted"], stats["queries"])
    return reasoning, stats


def train(cfg: DictConfig, paths: RunPaths) -> dict:
    if cfg.backend.name == "megatron":
        from pretrain.backends.megatron_train import train_sft
        return train_sft(cfg, paths)
    tcfg, out = cfg.sft, paths.stage("sft")
    rank, world = pdist.init()  # torchrun's or a submitit task's group; none for one process
    backend = backend_args(cfg, tcfg, world)  # fails on an unsupported backend before any work
    final = paths.model("sft")
    if (final / "complete").exists() and tcfg.resume != "never":
        log.info("sft: %s is already trained", final)
        return Tracker.load(out)
    init = Path(tcfg.init) if tcfg.init else paths.model("cpt")
    tok = load_tokenizer(init)
    model = load_model(init, cfg.model, cfg.backend.dtype)
    # The MoE load-balancing loss is added during training only.
    model.config.output_router_logits = True
    records = datasets.Dataset.from_parquet(paths.shards("sft"))
    reasoning, teacher_stats = teacher_reasoning(cfg, records, out)
    dataset, stats = tokenized_samples(tok, records, tcfg.max_length,
                                       tcfg.train_history_observations, reasoning)
    if teacher_stats is not None:
        stats["teacher"] = teacher_stats
    tracker = Tracker(cfg, "sft", out) if rank == 0 else None
    # Packing is padding-free (position ids restart per sample), so neither attention nor the
    # loss crosses sample boundaries; tests/test_sft_packing.py checks the loss is unchanged.
    args = SFTConfig(**trainer_args(cfg, tcfg, out, max_length=tcfg.max_length,
                                    packing=tcfg.packing, packing_strategy="bfd",
                                    padding_free=tcfg.packing, completion_only_loss=None,
                                    **backend))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    check_world(trainer, world, cfg.backend.name)
    result = trainer.train(resume_from_checkpoint=resume_arg(tcfg.resume, out / "checkpoints"))
    save_final(trainer, tok, final)
    if tracker is None:
        return {}
    history = [h for h in trainer.state.log_history if "loss" in h]
    return tracker.finish({
        **stats, "init": str(init), "steps": trainer.state.global_step,
        "backend": cfg.backend.name, "data_parallel": trainer.args.world_size,
        "train_loss_first": history[0]["loss"] if history else None,
        "train_loss_last": history[-1]["loss"] if history else None,
        "train_runtime_s": result.metrics.get("train_runtime"), "checkpoint": str(final)})
