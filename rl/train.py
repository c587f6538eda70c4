"""`lwm rl`: GSPO or GRPO (TRL) from the SFT checkpoint with the hybrid reward of rl/rewards.py.

One turn per trajectory (prepared that way). The reward is w_rubric * judge rubric + w_rule *
rule verifier (rules alone when no judge endpoint is configured, so runs work offline), minus
a penalty for judge-directed text; it sees only the observation extracted from
<predicted_observation> tags. Generation is TRL's: vLLM (colocated or a server) with
rl.use_vllm, transformers' generate otherwise. TRL logs every reward component
(rewards/<name>/mean), the rubric dimensions, judge failure rate, completion length, KL and
clip ratios to wandb each logging step; the same per-step series go to rl/metrics.json.

The backend is SFT's (lwm.train.trl.backend_args): hf (DDP under torchrun) or DeepSpeed ZeRO 0-3 with
a config generated from ours (TRL gathers ZeRO-3 weights for generation); rank 0 writes the
metrics and the final model.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path

import datasets
from omegaconf import DictConfig
from trl import GRPOConfig, GRPOTrainer

from lwm.models.hf import load_model
from lwm.tokenizer import encode_prompt, load_tokenizer
from lwm.tracking import RunPaths, Tracker
from lwm.train import dist, loop
from lwm.train.trl import (ExactResume, backend_args, carried, check_world, mark_complete, resume_arg,
                           save_final, trainer_args)
from rl.rewards import HybridReward

log = logging.getLogger("lwm.rl")

# Per-step series kept in metrics.json (TRL's log names; prefixes match every key under them).
LOGGED = ("reward", "reward_std", "rewards/", "rubric/", "judge/", "guard/", "completions/mean_length",
          "kl", "clip_ratio/", "entropy", "loss")
COUNTED = ("samples", "judged", "judge_failed", "guarded")


class Trainer(ExactResume, GRPOTrainer):
    """TRL's GRPOTrainer, resuming every weight of its checkpoint and the reward counts of the
    run so far (lwm.train.trl.ExactResume)."""


def rl_prompts(tok, shards: list[str], max_prompt_length: int) -> tuple[datasets.Dataset, dict]:
    data = datasets.Dataset.from_parquet(shards)
    fits = data.filter(lambda r: len(encode_prompt(tok, r["prompt"])) <= max_prompt_length)
    if len(fits) == 0:
        raise ValueError(f"no RL prompt of {shards[0]}... fits rl.max_prompt_length={max_prompt_length}")
    return fits, {"prompts": len(fits), "skipped_too_long": len(data) - len(fits)}


def generation_args(tcfg) -> dict:
    """vLLM when asked for and installed; TRL's transformers generation otherwise."""
    if not tcfg.use_vllm:
        return {"use_vllm": False}
    if importlib.util.find_spec("vllm") is None:
        log.warning("rl.use_vllm: vllm is not installed; generating with transformers")
        return {"use_vllm": False}
    if tcfg.vllm_mode not in ("colocate", "server"):
        raise ValueError(f"rl.vllm_mode: '{tcfg.vllm_mode}' is not one of colocate, server")
    extra = {"vllm_server_base_url": tcfg.vllm_server_base_url} if tcfg.vllm_server_base_url else {}
    return {"use_vllm": True, "vllm_mode": tcfg.vllm_mode,
            "vllm_gpu_memory_utilization": tcfg.vllm_gpu_memory_utilization, **extra}


def step_series(log_history: list[dict]) -> list[dict]:
    """The logged training steps, reduced to the reward breakdown and optimisation metrics."""
    return [{"step": h["step"], **{k: round(v, 6) for k, v in h.items()
                                   if isinstance(v, float) and k.startswith(LOGGED)}}
            for h in log_history if "reward" in h]


def all_ranks(counts: Counter, device) -> dict:
    """The reward counts (HybridReward.counts) of every rank summed: each rank scores only its
    own completions. A collective: every rank calls it; `device` is the one NCCL reduces on."""
    import torch
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {k: int(counts.get(k, 0)) for k in COUNTED}
    total = torch.tensor([float(counts.get(k, 0)) for k in COUNTED], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return {k: int(v) for k, v in zip(COUNTED, total.tolist())}


def totals(before: Counter, counts: Counter, device) -> dict:
    """The run's reward counts: those carried by the resumed checkpoint plus every rank's since.
    A collective, as all_ranks."""
    now = all_ranks(counts, device)
    return {k: int(before.get(k, 0)) + now[k] for k in COUNTED}


def train(cfg: DictConfig, paths: RunPaths) -> dict:
    tcfg, out = cfg.rl, paths.stage("rl")
    final = paths.model("rl")
    done = loop.finished(out, final, tcfg, "rl")  # as far as asked; a larger max_steps trains on
    if done is not None:
        return done
    (final / "complete").unlink(missing_ok=True)  # until this run's final/ and metrics.json are written
    rank, world = dist.init()  # torchrun's or a submitit task's group; none for one process
    backend = backend_args(cfg, tcfg, world, "rl")  # fails on an unsupported backend before any work
    if tcfg.algorithm not in ("grpo", "gspo"):
        raise ValueError(f"rl.algorithm: '{tcfg.algorithm}' is not one of grpo, gspo")
    reward = HybridReward(tcfg)
    funcs, weights = reward.funcs()
    init = Path(tcfg.init) if tcfg.init else paths.model("sft")
    tok = load_tokenizer(init)
    tok.padding_side = "left"
    model = load_model(init, cfg.model, cfg.backend.dtype)
    dataset, stats = rl_prompts(tok, paths.shards("rl"), tcfg.max_prompt_length)
    tracker = Tracker(cfg, "rl", out) if rank == 0 else None
    args = GRPOConfig(**trainer_args(
        cfg, tcfg, out, num_generations=tcfg.num_generations, temperature=tcfg.temperature,
        max_completion_length=tcfg.max_completion_length, beta=tcfg.beta, epsilon=tcfg.epsilon,
        importance_sampling_level="sequence" if tcfg.algorithm == "gspo" else "token",
        reward_weights=weights, log_completions=False, **generation_args(tcfg), **backend))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tok, reward_funcs=funcs)
    check_world(trainer, world, cfg.backend.name, "rl")
    resume = resume_arg(tcfg.resume, out / "checkpoints")
    # The reward counts live in memory: each checkpoint carries the run's totals so far, and a
    # resumed run adds its own to those (the series below come back with trainer_state.json).
    before = Counter(carried(resume).get("reward_counts", {}))
    trainer.carried_state = lambda: {"reward_counts": totals(before, reward.counts, trainer.accelerator.device)}
    trainer.train(resume_from_checkpoint=resume)
    reward.check_judge(final=True)  # a run shorter than the failure window: judged over what it had
    save_final(trainer, tok, final)
    counts = totals(before, reward.counts, trainer.accelerator.device)
    if tracker is None:
        return {}
    steps = step_series(trainer.state.log_history)
    summary = tracker.finish({
        **stats, "init": str(init), "algorithm": tcfg.algorithm, "steps": trainer.state.global_step,
        "backend": cfg.backend.name, "data_parallel": trainer.args.world_size,
        "reward_weights": reward.weights, "judge": tcfg.judge.base_url or None,
        "judge_calls": counts.get("judged", 0), "judge_failed": counts.get("judge_failed", 0),
        "judge_failure_rate": counts["judge_failed"] / counts["judged"] if counts.get("judged") else None,
        "guard_flagged": counts.get("guarded", 0), "scored_completions": counts.get("samples", 0),
        "reward_first": steps[0]["reward"] if steps else None,
        "reward_last": steps[-1]["reward"] if steps else None,
        "reward_curve": [round(s["reward"], 4) for s in steps], "per_step": steps,
        "checkpoint": str(final)})
    mark_complete(final)
    return summary
