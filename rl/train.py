"""`lwm rl`: GSPO or GRPO (TRL) from the SFT checkpoint with the hybrid reward of rl/rewards.py.

One turn per trajectory (prepared that way). The reward is w_rubric * judge rubric + w_rule *
rule verifier (rules alone when no judge endpoint is configured, so runs work offline), minus
a penalty for judge-directed text; it sees only the observation extracted from
<predicted_observation> tags. Generation is TRL's: vLLM (colocated or a server) with
rl.use_vllm, transformers' generate otherwise. rl.algorithm picks TRL's settings (ALGORITHMS):
grpo on-policy with a ratio per token, gspo TRL's GSPO recipe, a clipped ratio per sequence over
4 optimizer steps per generation. TRL logs every reward component
(rewards/<name>/mean), the rubric dimensions, judge failure rate, completion length, KL and
clip ratios to wandb each logging step, with the reward's spread within groups (reward_std,
frac_reward_zero_std: groups that give no gradient) and the policy's change per step
(PolicyChange); the same per-step series, and their means, go to rl/metrics.json.
With rl.validation_prompts, prompts kept out of training are scored before and after
(rl/validation.py); rl.keep_best then keeps the starting weights unless RL's score higher there.

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
import torch
from omegaconf import DictConfig
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from lwm.models.hf import load_model
from lwm.tokenizer import encode_prompt, load_tokenizer
from lwm.tracking import RunPaths, Tracker
from lwm.train import dist, loop
from lwm.train.trl import (ExactResume, backend_args, carried, check_world, gradient_checkpointing, mark_complete,
                           resume_arg, save_final, trained_with, trainer_args, uses_checkpointing)
from rl import validation
from rl.rewards import HybridReward

log = logging.getLogger("lwm.rl")
GENERATION_BUFFER = "generation_buffer"  # a checkpoint's <this>_<rank>.pt: Trainer's generation block

# Per-step series kept in metrics.json (TRL's log names; prefixes match every key under them).
LOGGED = ("reward", "reward_std", "frac_reward_zero_std", "rewards/", "rubric/", "judge/", "guard/",
          "completions/mean_length", "kl", "policy_change", "clip_ratio/", "entropy", "loss")
# The relative weight update of a step is measured on models up to this size (it keeps a copy of
# the weights between the optimizer's step and the one before).
POLICY_CHANGE_MAX_PARAMS = 2_000_000_000
COUNTED = ("samples", "judged", "judge_failed", "guarded")

# What rl.algorithm sets in TRL's GRPOConfig for each rl.* key left null (a value set there wins).
# `mini_batches`: micro-batches of one generation per rl.grad_accum (steps_per_generation =
# mini_batches * grad_accum); above 1, every optimizer step after a generation's first is off-policy.
ALGORITHMS = {
    # TRL's GRPOConfig defaults (trl 1.16 grpo_config.py): a ratio per token, loss_type "dapo"
    # (summed over the active tokens of the accumulated batch), epsilon 0.2 on both sides, one
    # generation per optimizer step used once: fully on-policy.
    "grpo": dict(importance_sampling_level="token", loss_type="dapo", epsilon=0.2, epsilon_high=None,
                 mini_batches=1),
    # TRL docs, paper index, "Group Sequence Policy Optimization" (docs/source/paper_index.md, since
    # TRL PR #3798): the ratio per sequence, exp(mean over its tokens of log pi - log pi_old);
    # loss_type "grpo" (a mean per sequence; GRPOTrainer warns that "dapo" weights sequences by
    # length); epsilon 3e-4 / epsilon_high 4e-4 and the rollout split into 4 mini-batches
    # (steps_per_generation = 4 * gradient_accumulation_steps), both "GSPO paper (v2), section 5.1".
    # The recipe's beta=0.0 is rl.beta's default already.
    "gspo": dict(importance_sampling_level="sequence", loss_type="grpo", epsilon=3e-4, epsilon_high=4e-4,
                 mini_batches=4),
}


class Trainer(ExactResume, GRPOTrainer):
    """TRL's GRPOTrainer, resuming every weight of its checkpoint and the reward counts of the
    run so far (lwm.train.trl.ExactResume), and inside a generation block as well.

    With steps_per_generation above grad_accum (gspo), one generation serves several optimizer
    steps from GRPOTrainer's buffer (`_buffered_inputs`, sliced by its micro-step counter
    `_step`); neither is in TRL's checkpoint, so a run resumed inside the block would generate
    anew, with other completions and a second round of judge calls, and its later generations
    would fall on other steps. Each rank saves both beside its RNG state and loads them back with
    it (the Trainer restores the RNG state on every resume, DeepSpeed's included)."""

    def _buffer_file(self, folder) -> Path:
        return Path(folder) / f"{GENERATION_BUFFER}_{self.args.process_index}.pt"

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        torch.save({"step": self._step, "buffered_inputs": self._buffered_inputs}, self._buffer_file(output_dir))

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._buffer_file(checkpoint)
        if not path.exists():
            raise FileNotFoundError(
                f"resume: {path} is missing (the checkpoint was written by an older version or another "
                "number of ranks): the generation block it stopped in cannot be resumed exactly; start "
                "over with rl.resume=never")
        device = self.accelerator.device  # "cpu:0" under DeepSpeed, which torch.load cannot map to
        state = torch.load(path, map_location="cpu" if device.type == "cpu" else device, weights_only=True)
        self._step, self._buffered_inputs = state["step"], state["buffered_inputs"]


class PolicyChange(TrainerCallback):
    """Logs each optimizer step's weight update relative to the weights, ||dW|| / ||W||, as
    `policy_change` (TRL averages it over the steps of a logging interval). With rl.beta = 0 TRL
    computes no KL: this is then what shows the policy moved. Weights sharded away from this rank
    (ZeRO-3) are skipped; models above POLICY_CHANGE_MAX_PARAMS are not measured."""

    def __init__(self, trainer):
        self.trainer, self.before = trainer, None
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.params = params if sum(p.numel() for p in params) <= POLICY_CHANGE_MAX_PARAMS else []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before = [p.detach().clone() for p in self.params]

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.before:
            return
        with torch.no_grad():
            delta = sum(float((p.detach().float() - b.float()).pow(2).sum()) for p, b in zip(self.params, self.before))
            norm = sum(float(b.float().pow(2).sum()) for b in self.before)
        self.before = None
        if norm > 0:
            self.trainer._metrics["train"]["policy_change"].append((delta / norm) ** 0.5)


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


def algorithm_args(tcfg) -> dict:
    """The GRPOConfig arguments that make rl.algorithm what it says (ALGORITHMS), with the rl.*
    keys set explicitly winning over the algorithm's values.

    grpo: TRL's defaults, on-policy, a ratio per token. gspo: TRL's documented GSPO recipe, a
    clipped ratio per sequence over mini-batches of a generation reused off-policy. GSPO fully
    on-policy is refused: its sequence ratio is then exactly 1, the clip never binds and the
    gradient is GRPO's (TRL's _compute_loss skips old_per_token_logps when num_iterations == 1 and
    steps_per_generation <= gradient_accumulation_steps)."""
    if tcfg.algorithm not in ALGORITHMS:
        raise ValueError(f"rl.algorithm: '{tcfg.algorithm}' is not one of {', '.join(ALGORITHMS)}")
    algo = ALGORITHMS[tcfg.algorithm]

    def pick(key):
        value = getattr(tcfg, key)
        return algo[key] if value is None else value

    # An rl.epsilon set alone clips both sides (TRL's epsilon_high=None), not against the recipe's upper one.
    epsilon_high = tcfg.epsilon_high if tcfg.epsilon_high is not None or tcfg.epsilon is not None \
        else algo["epsilon_high"]
    steps_per_generation = (algo["mini_batches"] * tcfg.grad_accum if tcfg.steps_per_generation is None
                            else tcfg.steps_per_generation)
    num_iterations = tcfg.num_iterations
    if tcfg.algorithm == "gspo" and num_iterations == 1 and steps_per_generation <= tcfg.grad_accum:
        raise ValueError(
            f"rl.algorithm=gspo with rl.steps_per_generation={steps_per_generation} (rl.grad_accum="
            f"{tcfg.grad_accum}) and rl.num_iterations=1 trains fully on-policy, where the sequence ratio "
            "is 1 and GSPO is GRPO: leave rl.steps_per_generation null (4 * rl.grad_accum, TRL's GSPO "
            "recipe) or set it above rl.grad_accum, set rl.num_iterations > 1, or use rl.algorithm=grpo")
    return dict(importance_sampling_level=algo["importance_sampling_level"], loss_type=pick("loss_type"),
                epsilon=pick("epsilon"), epsilon_high=epsilon_high,
                steps_per_generation=steps_per_generation, num_iterations=num_iterations)


def grpo_args(cfg, tcfg, out: Path, **extra) -> dict:
    """Every GRPOConfig argument of the stage but the backend's and generation's (in `extra`)."""
    return trainer_args(
        cfg, tcfg, out, num_generations=tcfg.num_generations, temperature=tcfg.temperature,
        max_completion_length=tcfg.max_completion_length, beta=tcfg.beta, log_completions=False,
        **algorithm_args(tcfg), **extra)


def step_series(log_history: list[dict]) -> list[dict]:
    """The logged training steps, reduced to the reward breakdown and optimisation metrics. A
    step that reused an earlier generation (gspo) logs no reward, only its loss, KL and clip ratios."""
    return [{"step": h["step"], **{k: round(v, 6) for k, v in h.items()
                                   if isinstance(v, float) and k.startswith(LOGGED)}}
            for h in log_history if "reward" in h or "loss" in h]


def signal(steps: list[dict]) -> dict:
    """Whether the reward could move the policy: the mean spread of the reward within prompt
    groups, the mean share of groups whose completions all scored alike (they give no
    gradient), and the policy's change (KL when rl.beta > 0; the relative weight update always)."""
    def avg(key):
        vals = [s[key] for s in steps if s.get(key) is not None]
        return sum(vals) / len(vals) if vals else None
    return {"reward_std_mean": avg("reward_std"), "frac_reward_zero_std_mean": avg("frac_reward_zero_std"),
            "kl_mean": avg("kl"), "policy_change_mean": avg("policy_change")}


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
    algorithm_args(tcfg)  # fails on an unknown or no-op algorithm setting before any work
    checkpointing = gradient_checkpointing(cfg, tcfg, "rl")
    reward = HybridReward(tcfg)
    funcs, weights = reward.funcs()
    init = Path(tcfg.init) if tcfg.init else paths.model("sft")
    tok = load_tokenizer(init)
    tok.padding_side = "left"
    model = load_model(init, cfg.model, cfg.backend.dtype)
    dataset, stats = rl_prompts(tok, paths.shards("rl"), tcfg.max_prompt_length)
    dataset, val = validation.split(dataset, tcfg.validation_prompts, cfg.seed)
    if tcfg.keep_best and val is None:
        raise ValueError("rl.keep_best compares the final weights with the starting ones on held-out "
                         "prompts: set rl.validation_prompts > 0, or rl.keep_best=false")
    stats["validation_prompts"] = 0 if val is None else len(val)  # of stats["prompts"], not trained on
    backend["gradient_checkpointing"] = uses_checkpointing(checkpointing, cfg, model)
    tracker = Tracker(cfg, "rl", out) if rank == 0 else None
    args = GRPOConfig(**grpo_args(cfg, tcfg, out, reward_weights=weights, **generation_args(tcfg), **backend))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tok, reward_funcs=funcs)
    trainer.add_callback(PolicyChange(trainer))
    check_world(trainer, world, cfg.backend.name, "rl")
    resume = resume_arg(tcfg.resume, out / "checkpoints")
    # The reward counts live in memory: each checkpoint carries the run's totals so far, and a
    # resumed run adds its own to those (the series below come back with trainer_state.json).
    state = carried(resume)
    before = Counter(state.get("reward_counts", {}))
    held = None
    if val is not None:  # its own reward: held-out scoring is not counted as training's
        held = validation.HeldOut(trainer, tok, val, HybridReward(tcfg), tcfg, state.get("held_out_init"))
        trainer.add_callback(held)
    trainer.carried_state = lambda: {"reward_counts": totals(before, reward.counts, trainer.accelerator.device),
                                     **({"held_out_init": held.init} if held else {})}
    trainer.train(resume_from_checkpoint=resume)
    reward.check_judge(final=True)  # a run shorter than the failure window: judged over what it had
    held_out, kept = {}, "rl"
    if held is not None:
        held_out = {"init": held.init, "final": held.measure()}
        kept = validation.keep(held_out["init"], held_out["final"], tcfg.keep_best)
    if kept == "init":  # the same decision on every rank: the scores were reduced over all of them
        log.warning("rl: the final weights score %.4f on %d held-out prompts, not above the starting "
                    "weights' %.4f: rl.keep_best keeps %s as rl's model", held_out["final"]["macro"],
                    len(val), held_out["init"]["macro"], init)
        if trainer.is_world_process_zero():
            validation.copy_init(init, final)
    else:
        save_final(trainer, tok, final)
    counts = totals(before, reward.counts, trainer.accelerator.device)
    if tracker is None:
        return {}
    steps = step_series(trainer.state.log_history)
    rewarded = [s for s in steps if "reward" in s]
    summary = tracker.finish({
        **stats, "init": str(init), "algorithm": tcfg.algorithm, "steps": trainer.state.global_step,
        "backend": cfg.backend.name, "data_parallel": trainer.args.world_size,
        "reward_weights": reward.weights, "judge": tcfg.judge.base_url or None,
        "judge_calls": counts.get("judged", 0), "judge_failed": counts.get("judge_failed", 0),
        "judge_failure_rate": counts["judge_failed"] / counts["judged"] if counts.get("judged") else None,
        "guard_flagged": counts.get("guarded", 0), "scored_completions": counts.get("samples", 0),
        "reward_first": rewarded[0]["reward"] if rewarded else None,
        "reward_last": rewarded[-1]["reward"] if rewarded else None,
        "reward_curve": [round(s["reward"], 4) for s in rewarded],
        "held_out": held_out or None, "kept": kept,
        **signal(steps), "per_step": steps,
        **trained_with(trainer), "checkpoint": str(final)})
    mark_complete(final)
    return summary
