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
from lwm.models.hf import load_model
from lwm.render import target
from lwm.tokenizer import drop_oldest_turn, encode_chat, load_tokenizer
from lwm.tracking import RunPaths, Tracker
from lwm.train import dist, loop
from lwm.train.data import RowBatches
from lwm.train.trl import (ExactResume, StepTimer, backend_args, check_world, gradient_checkpointing,
                           mark_complete, resume_arg, save_final, trained_with, trainer_args,
                           uses_checkpointing)
from sft.teacher import on_rank0, reasoning_targets

log = logging.getLogger("lwm.sft")


class Trainer(ExactResume, SFTTrainer):
    """TRL's SFTTrainer, resuming every weight of its checkpoint (lwm.train.trl.ExactResume)."""


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
    tcfg, out = cfg.sft, paths.stage("sft")
    final = paths.model("sft")
    done = loop.finished(out, final, tcfg, "sft")  # as far as asked; a larger max_steps trains on
    if done is not None:
        return done
    (final / "complete").unlink(missing_ok=True)  # until this run's final/ and metrics.json are written
    rank, world = dist.init(always=cfg.backend.name == "megatron")  # torchrun's or a submitit task's group
    backend = {} if cfg.backend.name == "megatron" else backend_args(cfg, tcfg, world, "sft")
    checkpointing = gradient_checkpointing(cfg, tcfg, "sft")  # a wrong value fails before any work
    init = Path(tcfg.init) if tcfg.init else paths.model("cpt")
    tok = load_tokenizer(init)
    records = datasets.Dataset.from_parquet(paths.shards("sft"))
    reasoning, teacher_stats = teacher_reasoning(cfg, records, out)
    dataset, stats = tokenized_samples(tok, records, tcfg.max_length,
                                       tcfg.train_history_observations, reasoning)
    stats["init"] = str(init)
    if teacher_stats is not None:
        stats["teacher"] = teacher_stats
    if cfg.backend.name == "megatron":
        # Megatron has no packed-sequence attention here: one sample per row, right-padded.
        rows = RowBatches(dataset, tcfg.max_length, tok.pad_token_id, cfg.seed)
        return loop.run(cfg, paths, loop.Job(stage="sft", tcfg=tcfg, tok=tok, train=rows, heldout=None,
                                             seq_len=tcfg.max_length, init=str(init), extra=stats))
    model = load_model(init, cfg.model, cfg.backend.dtype)
    # The MoE load-balancing loss is added during training only.
    model.config.output_router_logits = True
    tracker = Tracker(cfg, "sft", out) if rank == 0 else None
    checkpointing = uses_checkpointing(checkpointing, cfg, model)
    # Packing is padding-free (position ids restart per sample), so neither attention nor the
    # loss crosses sample boundaries; tests/test_sft_packing.py checks the loss is unchanged.
    args = SFTConfig(**trainer_args(cfg, tcfg, out, max_length=tcfg.max_length,
                                    packing=tcfg.packing, packing_strategy="bfd",
                                    padding_free=tcfg.packing, completion_only_loss=None,
                                    gradient_checkpointing=checkpointing,
                                    include_num_input_tokens_seen="non_padding",
                                    **backend))
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[timer])
    check_world(trainer, world, cfg.backend.name, "sft")
    result = trainer.train(resume_from_checkpoint=resume_arg(tcfg.resume, out / "checkpoints"))
    save_final(trainer, tok, final)
    if tracker is None:
        return {}
    # log_history comes back with the checkpoint: the losses cover the whole run.
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = tracker.finish({
        **stats, "steps": trainer.state.global_step,
        "backend": cfg.backend.name, "data_parallel": trainer.args.world_size,
        "warmup_steps": args.warmup_steps,
        "train_loss_first": history[0]["loss"] if history else None,
        "train_loss_last": history[-1]["loss"] if history else None,
        "train_runtime_s": result.metrics.get("train_runtime"), **timer.summary(), **trained_with(trainer),
        "checkpoint": str(final)})
    mark_complete(final)
    return summary
