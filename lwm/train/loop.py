"""The training loop, written once: every backend trains CPT (and Megatron trains SFT) through it.

    load (resume or start) -> held-out loss -> step / log / save -> held-out loss -> export

The loop owns what must not differ between backends: the resume setting (`auto | never | <dir>`,
read once by lwm.train.checkpoint.resolve_resume), the checkpoint policy (every `save_every` steps, at
the last step, and when Slurm asks the job to stop: lwm.train.preempt), which rows each
data-parallel rank reads (lwm.train.data.rank_batch), held-out loss before and after, logging and
the metrics schema, and the HF safetensors export the later stages read. An engine
(lwm.train.engines) is only the parallel machinery: it builds the model and optimizer, runs one
optimizer step over a step's micro-batches, and writes and reads its own checkpoint state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from lwm.train import checkpoint
from lwm.tracking import RunPaths, Tracker
from lwm.train import dist, preempt
from lwm.train.data import rank_batch
from lwm.train.engines import get_engine
from lwm.train.optim import spec

log = logging.getLogger("lwm.train")

HELDOUT_BATCHES = 8


@dataclass
class Job:
    """What a stage hands the loop."""
    stage: str                     # the run folder it writes (cpt, sft) and its metrics' name
    tcfg: object                   # the stage's TrainConfig (cfg.cpt, cfg.sft)
    tok: object
    train: object                  # .batch(k, batch_size) -> (ids, labels), .n rows
    heldout: object | None         # the same, or None
    seq_len: int
    init: str | None               # the HF checkpoint it starts from; None = a fresh model from config
    extra: dict = field(default_factory=dict)  # the stage's own metrics (sample counts, ...)


def heldout_loss(engine, batches, batch_size: int) -> float | None:
    if batches is None:
        return None
    n = min(HELDOUT_BATCHES, math.ceil(batches.n / batch_size))
    return float(np.mean([engine.eval_loss(*batches.batch(k, batch_size)) for k in range(n)]))


def run(cfg, paths: RunPaths, job: Job) -> dict:
    tcfg, stage = job.tcfg, job.stage
    out, final = paths.stage(stage), paths.model(stage)
    if (final / checkpoint.MARKER).exists() and tcfg.resume != "never":
        log.info("%s: %s is already trained", stage, final)
        return Tracker.load(out)
    preempt.install()
    engine = get_engine(cfg.backend.name)(cfg, job, paths)
    ckpt_dir = out / "checkpoints"
    resume_from = checkpoint.resolve_resume(tcfg.resume, ckpt_dir)
    step, resumed = 0, None
    if resume_from is not None:
        resumed = checkpoint.read_state(resume_from)
        engine.check_resume(resumed, resume_from)
    engine.setup(resume_from)
    if resume_from is not None:
        step = int(resumed["step"])
        log.info("%s: resumed from %s (step %d, written by %s; DP %s -> %d)", stage, resume_from, step,
                 resumed.get("layout", "?"), resumed.get("dp_size", "?"), engine.dp)
    main = dist.is_main()
    optim = spec(tcfg)
    tracker = Tracker(cfg, stage, out) if main else None
    before = heldout_loss(engine, job.heldout, tcfg.batch_size)
    tokens, t0, losses = 0, time.time(), []
    bar = tqdm(total=tcfg.max_steps, initial=step, desc=f"{stage} ({engine.name})", unit="step", disable=not main)
    while step < tcfg.max_steps:
        micro = [rank_batch(job.train, step, k, tcfg.grad_accum, engine.dp_rank, engine.dp, tcfg.batch_size)
                 for k in range(tcfg.grad_accum)]
        lr = optim.lr_at(step)
        loss, grad_norm = engine.step(micro, lr)
        step += 1
        tokens += sum(ids.numel() for ids, _ in micro) * engine.dp
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if tracker and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            tracker.log({"loss": loss, "lr": lr, "grad_norm": grad_norm,
                         "tokens_per_s": tokens / (time.time() - t0)}, step=step)
        preempted = preempt.requested() and step < tcfg.max_steps
        if step % tcfg.save_every == 0 or step == tcfg.max_steps or preempted:
            path = checkpoint.begin(ckpt_dir, step)
            engine.save(path)
            checkpoint.commit(path, step, {"layout": engine.describe(), **engine.meta()})
        if preempted:
            # Slurm is about to stop the job: the requeued job resumes from this checkpoint.
            log.info("%s: preempted at step %d, checkpoint saved", stage, step)
            bar.close()
            return {"steps": step, "preempted": True}
    bar.close()
    after = heldout_loss(engine, job.heldout, tcfg.batch_size)
    last = checkpoint.latest(ckpt_dir)
    engine.export(final, last)
    if main:
        (final / checkpoint.MARKER).touch()
    dist.barrier()
    if tracker is None:
        return {"steps": step, "rank": dist.rank()}
    return tracker.finish({
        **job.extra, **engine.meta(), "backend": engine.name, "layout": engine.describe(), "data_parallel": engine.dp,
        "steps": step, "resumed_from": str(resume_from) if resume_from else None,
        "warmup_steps": optim.warmup_steps,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": float(np.mean(losses[-5:])) if losses else None,
        "heldout_loss_before": before, "heldout_loss_after": after,
        "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
        "checkpoint": str(final), "last_checkpoint": str(last) if last else None})
