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

import errno
import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lwm.train import checkpoint
from lwm.tracking import RunPaths, Tracker
from lwm.train import dist, preempt
from lwm.train.data import Prefetch, rank_batch
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


def finished(out: Path, final: Path, tcfg, stage: str) -> dict | None:
    """The metrics of a finished stage, when it trained as far as asked; None when it is to train
    (on): a larger max_steps continues from the last checkpoint, which is always the last step."""
    if tcfg.resume == "never" or not (final / checkpoint.MARKER).exists():
        return None
    done = Tracker.load(out)
    if done.get("steps") == tcfg.max_steps:
        log.info("%s: %s is already trained (%d steps)", stage, final, done["steps"])
        return done
    if done.get("steps", 0) > tcfg.max_steps:
        raise RuntimeError(f"{stage}: {final} was trained for {done['steps']} steps, more than "
                           f"{stage}.max_steps={tcfg.max_steps}; {stage}.resume=never trains it again from the start")
    log.info("%s: %s has %s steps; training on to %d", stage, final, done.get("steps"), tcfg.max_steps)
    return None


def _disk_full(path: Path, err: Exception) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(path if path.exists() else path.parent).free < 16 * 2**20
    except OSError:
        return False


@contextmanager
def _writing(path: Path, what: str):
    """Writes that fail on a full disk say so, with the path (a checkpoint writer's own message
    may name neither), and leave no partial folder behind to hold the space."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not _disk_full(path, err):
            raise
        if dist.is_main():
            shutil.rmtree(path, ignore_errors=True)
        raise OSError(errno.ENOSPC, f"no space left on device writing {what} {path} ({err}); free space "
                      "there, or move the run to another file system (hydra.run.dir=...)") from err


def run(cfg, paths: RunPaths, job: Job) -> dict:
    tcfg, stage = job.tcfg, job.stage
    out, final = paths.stage(stage), paths.model(stage)
    done = finished(out, final, tcfg, stage)
    if done is not None:
        return done
    preempt.install()
    engine = get_engine(cfg.backend.name)(cfg, job, paths)
    ckpt_dir = out / "checkpoints"
    resume_from = checkpoint.resolve_resume(tcfg.resume, ckpt_dir)
    step, resumed = 0, {}
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
    # Batches are assembled on a background thread from here on, ahead of the steps that take
    # them: the first ones while the held-out loss runs. Batch k is still rank_batch(k).
    def step_batches(s: int) -> list:
        return [rank_batch(job.train, s, k, tcfg.grad_accum, engine.dp_rank, engine.dp, tcfg.batch_size)
                for k in range(tcfg.grad_accum)]

    with Prefetch(step_batches, range(step, tcfg.max_steps)) as upcoming:
        # The whole run's statistics: carried in every checkpoint, so a resumed run reports them all.
        stats = resumed.get("stats") or {"heldout_loss_before": heldout_loss(engine, job.heldout, tcfg.batch_size),
                                         "train_loss_first": None, "recent_losses": [], "tokens": 0, "train_s": 0.0}
        t0, segment_tokens = time.time(), 0
        bar = tqdm(total=tcfg.max_steps, initial=step, desc=f"{stage} ({engine.name})", unit="step", disable=not main)
        while step < tcfg.max_steps:
            micro = next(upcoming)
            lr = optim.lr_at(step)
            loss, grad_norm = engine.step(micro, lr)
            step += 1
            segment_tokens += sum(ids.numel() for ids, _ in micro) * engine.dp
            if stats["train_loss_first"] is None:
                stats["train_loss_first"] = loss
            stats["recent_losses"] = (stats["recent_losses"] + [loss])[-5:]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if tracker and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
                tracker.log({"loss": loss, "lr": lr, "grad_norm": grad_norm,
                             "tokens_per_s": segment_tokens / (time.time() - t0)}, step=step)
            preempted = preempt.requested() and step < tcfg.max_steps
            if step % tcfg.save_every == 0 or step == tcfg.max_steps or preempted:
                saved = {**stats, "tokens": stats["tokens"] + segment_tokens,
                         "train_s": stats["train_s"] + time.time() - t0}
                path = checkpoint.begin(ckpt_dir, step)
                with _writing(path, "the checkpoint"):
                    engine.save(path)
                    checkpoint.commit(path, step, {"layout": engine.describe(), **engine.meta(), "stats": saved})
            if preempted:
                # Slurm is about to stop the job: the requeued job resumes from this checkpoint.
                log.info("%s: preempted at step %d, checkpoint saved", stage, step)
                bar.close()
                return {"steps": step, "preempted": True}
    bar.close()
    stats["tokens"] += segment_tokens
    stats["train_s"] += time.time() - t0
    after = heldout_loss(engine, job.heldout, tcfg.batch_size)
    last = checkpoint.latest(ckpt_dir)
    with _writing(final, "the final model"):
        engine.export(final, last)
    dist.barrier()
    result = {"steps": step, "rank": dist.rank()}
    if tracker is not None:
        # metrics before the marker: a finished stage always has both
        result = tracker.finish({
            **job.extra, **engine.meta(), "backend": engine.name, "layout": engine.describe(),
            "data_parallel": engine.dp, "steps": step, "resumed_from": str(resume_from) if resume_from else None,
            "warmup_steps": optim.warmup_steps, "train_loss_first": stats["train_loss_first"],
            "train_loss_last": float(np.mean(stats["recent_losses"])) if stats["recent_losses"] else None,
            "heldout_loss_before": stats["heldout_loss_before"], "heldout_loss_after": after,
            "tokens": stats["tokens"], "tokens_per_s": stats["tokens"] / max(stats["train_s"], 1e-9),
            "checkpoint": str(final), "last_checkpoint": str(last) if last else None})
        (final / checkpoint.MARKER).touch()
    dist.barrier()
    return result
