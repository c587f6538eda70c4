"""backend=megatron training: CPT (`train`) and SFT (`train_sft`) in one megatron-core loop.

Both stages start from an HF checkpoint (imported into a dist checkpoint), train with Megatron's
DDP, optimizer (distributed or not) and pipeline schedule, checkpoint weights and optimizer
with dist_checkpointing (resumable on another data-parallel size), and end with an HF
checkpoint in <run>/<stage>/final that the later stages read. Only the batches differ:
- CPT: the packed shards, with prepare's loss mask (the hf loop's labels);
- SFT: the same tokenized samples as `lwm sft` (loss on the target observation, teacher
  reasoning included), one sample per row, right-padded to sft.max_length.

Runs on GPUs; the tests run it on CPU over gloo with Megatron's CUDA-only spots patched
(tests/megatron_cpu.py sets CPU_ENV).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from lwm.parallel_config import parallel_plan, world_size_of
from pretrain.backends import dist as pdist
from pretrain.backends.megatron import build_model, ddp_config, initialize_parallel, optimizer_config

log = logging.getLogger("lwm.megatron")

CPU_ENV = "LWM_MEGATRON_ON_CPU"  # tests only: set by tests/megatron_cpu.py once Megatron is patched for CPU


class CptBatches:
    """Packed CPT rows and their labels (pad and loss-masked tokens are -100)."""

    def __init__(self, shards, pad_id: int):
        self.shards, self.pad_id = shards, pad_id

    def batch(self, k: int, batch_size: int):
        from pretrain.train import labels_for
        ids, mask = self.shards.batch(k, batch_size)
        return ids, labels_for(ids, mask, self.pad_id)


class SftBatches:
    """SFT samples, one per row, right-padded to `length`: Megatron's torch attention has no
    packed-sequence support, and under causal attention the padding after a sample changes
    nothing before it. Row k*bs+j of epoch e is sample perm(seed+e)[...], as CPT shards are."""

    def __init__(self, rows, length: int, pad_id: int, seed: int):
        self.rows, self.length, self.pad_id, self.seed = rows, length, pad_id, seed

    def batch(self, k: int, batch_size: int):
        n = len(self.rows)
        ids = torch.full((batch_size, self.length), self.pad_id, dtype=torch.long)
        labels = torch.full((batch_size, self.length), -100, dtype=torch.long)
        for r, j in enumerate(range(k * batch_size, (k + 1) * batch_size)):
            epoch, i = divmod(j, n)
            row = self.rows[int(np.random.default_rng(self.seed + epoch).permutation(n)[i])]
            ids[r, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
            labels[r, :len(row["labels"])] = torch.tensor(row["labels"])
        return ids, labels


def _layout_meta(plan, bcfg) -> dict:
    m = bcfg.megatron
    return {"tp": m.tensor_parallel, "pp": m.pipeline_parallel, "cp": m.context_parallel,
            "ep": m.expert_parallel, "etp": m.expert_tensor_parallel, "dp_size": plan.dp,
            "distributed_optimizer": m.distributed_optimizer}


def check_resume_layout(saved: dict, now: dict, where) -> None:
    """Megatron checkpoints reshard across data-parallel sizes (model weights by key, the
    distributed optimizer's 'dp_reshardable' state by DP); a change of TP/PP/CP/EP/ETP or of the
    optimizer kind is refused by name instead of being loaded into the wrong slots."""
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if k != "dp_size" and saved.get(k) != v]
    if changed:
        raise RuntimeError(f"resume from {where}: the checkpoint's optimizer state was written with another "
                           f"layout ({', '.join(changed)}); resume with the old layout, or start from its "
                           "weights only: export it to HF (python -m pretrain.backends.megatron_ckpt export ...) "
                           "and pass <stage>.init=<that dir> with <stage>.resume=never")


def _prime_adam_state(opt) -> None:
    """Without Apex/TE Megatron runs torch's Adam, which keeps `step` per parameter and creates
    its state on the first step; the optimizer's sharded_state_dict reads that state, so before
    loading into a fresh optimizer it gets zero moments and step 0 (the load overwrites them)."""
    for sub in getattr(opt, "chained_optimizers", [opt]):
        inner = sub.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p].update(exp_avg=torch.zeros_like(p.data), exp_avg_sq=torch.zeros_like(p.data),
                                          step=torch.tensor(0.0))


def _restore_adam_step(opt) -> None:
    """The checkpoint keeps Adam's step count in the param groups (where TE's FusedAdam keeps
    it); torch's Adam reads it per parameter, and the per-parameter copy the load leaves behind
    is the zero from `_prime_adam_state`. Without this, bias correction restarts after a resume."""
    for sub in getattr(opt, "chained_optimizers", [opt]):
        inner = sub.optimizer
        for group in inner.param_groups:
            if "step" in group:
                for p in group["params"]:
                    if "step" in inner.state[p]:
                        inner.state[p]["step"] = torch.tensor(float(group["step"]))


def _complete(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.glob("step_*") if (p / "complete").exists())


def train(cfg, paths) -> dict:
    """`lwm cpt backend=megatron`."""
    from lwm.tokenizer import load_tokenizer
    from pretrain.train import PackedShards
    tok = load_tokenizer(cfg.data.tokenizer or paths.prepared / "tokenizer")
    batches = CptBatches(PackedShards(paths.prepared / "cpt" / "train", cfg.seed), tok.pad_token_id)
    return _run(cfg, paths, "cpt", cfg.cpt, batches, cfg.data.seq_len, tok,
                init=cfg.cpt.init or cfg.model.path or None, extra={})


def train_sft(cfg, paths) -> dict:
    """`lwm sft backend=megatron`: the samples `lwm sft` trains on, through Megatron."""
    import datasets

    from lwm.tokenizer import load_tokenizer
    from sft.train import teacher_reasoning, tokenized_samples
    tcfg = cfg.sft
    init = Path(tcfg.init) if tcfg.init else paths.model("cpt")
    tok = load_tokenizer(init)
    records = datasets.Dataset.from_parquet(paths.shards("sft"))
    pdist.init(always=True)  # the teacher's rank-0-only queries need the job's group
    reasoning, teacher_stats = teacher_reasoning(cfg, records, paths.stage("sft"))
    rows, stats = tokenized_samples(tok, records, tcfg.max_length, tcfg.train_history_observations, reasoning)
    if teacher_stats is not None:
        stats["teacher"] = teacher_stats
    batches = SftBatches(rows, tcfg.max_length, tok.pad_token_id, cfg.seed)
    return _run(cfg, paths, "sft", tcfg, batches, tcfg.max_length, tok, init=str(init),
                extra={**stats, "init": str(init)})


def _run(cfg, paths, stage: str, tcfg, batches, seq: int, tok, init: str | None, extra: dict) -> dict:
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_batch_on_this_cp_rank

    from launch import preempt
    from lwm.tracking import Tracker
    from pretrain.backends.megatron_ckpt import run_in_own_process
    from pretrain.train import lr_at

    if not torch.cuda.is_available() and not os.environ.get(CPU_ENV):
        raise RuntimeError("backend=megatron trains on GPUs (tests/megatron_cpu.py patches Megatron to run "
                           "its model and optimizer on CPU for the tests)")
    preempt.install()
    out, final = paths.stage(stage), paths.model(stage)
    if (final / "complete").exists() and tcfg.resume != "never":
        return Tracker.load(out)
    rank, world = pdist.init(always=True)
    plan = parallel_plan(cfg.model, cfg.backend, world)
    if cfg.cluster.name != "local" and world != world_size_of(cfg.cluster):
        log.warning("megatron: %d ranks running, cluster %s describes %d", world, cfg.cluster.name,
                    world_size_of(cfg.cluster))
    initialize_parallel(cfg.backend, cfg.seed)
    log.info("megatron %s: %s", stage, plan.describe())
    dev = pdist.device()
    vocab = cfg.model.vocab_size or len(tok)
    model = build_model(cfg.model, cfg.backend, vocab, seq).to(dev)
    model = DistributedDataParallel(config=model.config, ddp_config=ddp_config(cfg.backend), module=model)
    opt = get_megatron_optimizer(optimizer_config(cfg.backend, tcfg), [model])
    model.config.finalize_model_grads_func = finalize_model_grads
    layout = _layout_meta(plan, cfg.backend)
    # dp_reshardable: the distributed optimizer's shards re-split over another DP size on load
    opt_meta = {"distrib_optim_sharding_type": "dp_reshardable"}

    ckpt_dir = out / "checkpoints_megatron"
    done = [Path(tcfg.resume)] if tcfg.resume not in ("auto", "never") else (
        _complete(ckpt_dir) if tcfg.resume == "auto" else [])
    step = 0
    if done:
        src = done[-1]
        meta = json.loads((src / "lwm_meta.json").read_text())
        check_resume_layout(meta, layout, src)
        _prime_adam_state(opt)
        msd = model.module.sharded_state_dict()
        state = dist_checkpointing.load(
            {"model": msd, "optimizer": opt.sharded_state_dict(msd, is_loading=True, metadata=opt_meta)}, str(src))
        model.module.load_state_dict(state["model"])
        with torch.no_grad():  # in fp32 the main params are views of the weights, which autograd guards
            opt.load_state_dict(state["optimizer"])
        _restore_adam_step(opt)
        step = int(meta["step"])
        log.info("megatron %s: resumed from %s (step %d, DP %s -> %d)", stage, src, step, meta["dp_size"], plan.dp)
    else:
        start = ckpt_dir / "init"
        if rank == 0 and not start.exists():
            run_in_own_process("import", cfg, init, start)
        pdist.barrier()
        state = dist_checkpointing.load({"model": model.module.sharded_state_dict()}, str(start))
        model.module.load_state_dict(state["model"])
        opt.reload_model_params()  # the optimizer's main (fp32) copies follow the loaded weights

    def save(step: int) -> None:
        path = ckpt_dir / f"step_{step:07d}"
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        pdist.barrier()
        # With overlap_param_gather the distributed optimizer's last update reaches the weights
        # only in the next forward's pre-hooks: gather it now, or the checkpoint is a step stale.
        hooked = getattr(model, "use_forward_hook", False)
        if hooked:
            model.disable_forward_pre_hook(param_sync=True)
        msd = model.module.sharded_state_dict()
        dist_checkpointing.save({"model": msd, "optimizer": opt.sharded_state_dict(msd, metadata=opt_meta)},
                                str(path))
        if hooked:
            model.enable_forward_pre_hook()
        pdist.barrier()
        if rank == 0:  # the marker last: a kill mid-save leaves no checkpoint that resume trusts
            (path / "lwm_meta.json").write_text(json.dumps({"step": step, **layout}))
            (path / "complete").touch()
            for old in _complete(ckpt_dir)[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        pdist.barrier()

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    tracker = Tracker(cfg, stage, out) if rank == 0 else None
    fwd_bwd = get_forward_backward_func()
    # The CP group is always passed: from megatron-core 0.18 a missing group means the whole
    # world, which would split sequences over the data-parallel ranks too. 0.18 also added a
    # required is_hybrid_cp flag.
    cp_kw = {"cp_group": ps.get_context_parallel_group()}
    if "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters:
        cp_kw["is_hybrid_cp"] = False

    def forward_step(data_iter, model):
        ids, labels = next(data_iter)
        ids, labels = ids.to(dev), labels.to(dev)
        pos = torch.arange(ids.shape[1], device=dev).unsqueeze(0).expand_as(ids)
        # next-token targets, as HF's shift inside its loss
        tgt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        # with context parallelism each rank keeps its (load-balanced) chunks of the sequence
        b = get_batch_on_this_cp_rank({"tokens": ids, "labels": tgt, "position_ids": pos}, **cp_kw)
        keep = (b["labels"] != -100).float()
        out = model(b["tokens"], b["position_ids"], None, labels=b["labels"].clamp(min=0))

        def loss_fn(per_token):
            loss = (per_token.float() * keep).sum() / keep.sum().clamp(min=1)
            # a copy: the schedule divides the returned loss in place by the micro-batch count
            return loss, {"lm": loss.detach().clone()}
        return out, loss_fn

    tokens, t0, losses = 0, time.time(), []
    while step < tcfg.max_steps:
        for g in opt.param_groups:
            g["lr"] = tcfg.lr * lr_at(step, tcfg)
        micro = [pdist.rank_batch(batches, step, k, tcfg.grad_accum, dp_rank, dp, tcfg.batch_size)
                 for k in range(tcfg.grad_accum)]
        model.zero_grad_buffer()
        opt.zero_grad()
        reports = fwd_bwd(forward_step_func=forward_step, data_iterator=iter(micro), model=[model],
                          num_microbatches=tcfg.grad_accum, seq_length=seq,
                          micro_batch_size=tcfg.batch_size, forward_only=False)
        _, grad_norm, _ = opt.step()
        step += 1
        tokens += sum(int((ids != tok.pad_token_id).sum()) for ids, _ in micro) * dp
        # only the last pipeline stage has the losses: mean over micro-batches and DP replicas,
        # then handed to every stage for the log
        last = ps.is_pipeline_last_stage()
        loss = torch.tensor([sum(float(r["lm"]) for r in reports) / tcfg.grad_accum if last else 0.0])
        torch.distributed.all_reduce(loss, group=ps.get_data_parallel_group())
        torch.distributed.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())
        losses.append(loss.item() / dp)
        if tracker and losses and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            log.info("megatron %s: step %d/%d loss %.5f grad norm %.4f", stage, step, tcfg.max_steps,
                     losses[-1], float(grad_norm or 0))
            tracker.log({"loss": losses[-1], "grad_norm": float(grad_norm or 0),
                         "lr": tcfg.lr * lr_at(step - 1, tcfg),
                         "tokens_per_s": tokens / (time.time() - t0)}, step=step)
        preempted = preempt.requested() and step < tcfg.max_steps
        if step % tcfg.save_every == 0 or step == tcfg.max_steps or preempted:
            save(step)
        if preempted:
            log.info("megatron %s: preempted at step %d, checkpoint saved", stage, step)
            return {"steps": step, "preempted": True}
    # the HF checkpoint the later stages read, gathered from the last dist checkpoint
    if rank == 0:
        run_in_own_process("export", cfg, _complete(ckpt_dir)[-1], final, tokenizer=tok.name_or_path)
    pdist.barrier()
    result = {**extra, "steps": step, "backend": "megatron", "layout": plan.describe(), "data_parallel": dp,
              "train_loss_first": losses[0] if losses else None,
              "train_loss_last": losses[-1] if losses else None,
              "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
              "checkpoint": str(final), "dist_checkpoint": str(_complete(ckpt_dir)[-1])}
    return tracker.finish(result) if tracker else result
