"""`lwm rl`: GRPO (TRL) from the SFT checkpoint, rewarded by the domain's rule verifier.

One turn per trajectory (prepared that way). The reward sees only the observation extracted
from <predicted_observation> tags; reasoning before it is never scored.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from omegaconf import DictConfig
from trl import GRPOConfig, GRPOTrainer

from lwm.domains import get_domain
from lwm.modeling import load_model
from lwm.tokenizer import encode_prompt, load_tokenizer
from lwm.tracking import RunPaths, Tracker
from sft.train import resume_arg, save_final, trainer_args

log = logging.getLogger("lwm.rl")


def _text(completion) -> str:
    # Conversational datasets give [{"role": "assistant", "content": ...}]; plain ones a string.
    return completion[-1]["content"] if isinstance(completion, list) else completion


def _verdicts(completions, reference, domain):
    return [get_domain(d).verify(_text(c), r) for c, r, d in zip(completions, reference, domain)]


def rule_reward(completions, reference, domain, **_) -> list[float]:
    """The rule verifier's score in [0, 1]: format and content against the real observation."""
    return [v.score for v in _verdicts(completions, reference, domain)]


def rule_format(completions, reference, domain, **_) -> list[float]:
    """Logged with weight 0: the format part of the rule score."""
    return [v.format for v in _verdicts(completions, reference, domain)]


def rule_content(completions, reference, domain, **_) -> list[float]:
    """Logged with weight 0: the content part of the rule score."""
    return [v.content for v in _verdicts(completions, reference, domain)]


def rl_prompts(tok, shards: list[str], max_prompt_length: int) -> tuple[datasets.Dataset, dict]:
    data = datasets.Dataset.from_parquet(shards)
    fits = data.filter(lambda r: len(encode_prompt(tok, r["prompt"])) <= max_prompt_length)
    if len(fits) == 0:
        raise ValueError(f"no RL prompt of {shards[0]}... fits rl.max_prompt_length={max_prompt_length}")
    return fits, {"prompts": len(fits), "skipped_too_long": len(data) - len(fits)}


def train(cfg: DictConfig, paths: RunPaths) -> dict:
    tcfg, out = cfg.rl, paths.stage("rl")
    final = paths.model("rl")
    if (final / "complete").exists() and tcfg.resume != "never":
        log.info("rl: %s is already trained", final)
        return Tracker.load(out)
    if tcfg.algorithm not in ("grpo", "gspo"):
        raise ValueError(f"rl.algorithm: '{tcfg.algorithm}' is not one of grpo, gspo")
    init = Path(tcfg.init) if tcfg.init else paths.model("sft")
    tok = load_tokenizer(init)
    tok.padding_side = "left"
    model = load_model(init, cfg.model, cfg.backend.dtype)
    dataset, stats = rl_prompts(tok, paths.shards("rl"), tcfg.max_prompt_length)
    tracker = Tracker(cfg, "rl", out)
    args = GRPOConfig(**trainer_args(
        cfg, tcfg, out, num_generations=tcfg.num_generations, temperature=tcfg.temperature,
        max_completion_length=tcfg.max_completion_length, beta=tcfg.beta, epsilon=tcfg.epsilon,
        importance_sampling_level="sequence" if tcfg.algorithm == "gspo" else "token",
        reward_weights=[1.0, 0.0, 0.0], log_completions=False))
    trainer = GRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                          reward_funcs=[rule_reward, rule_format, rule_content])
    trainer.train(resume_from_checkpoint=resume_arg(tcfg.resume, out / "checkpoints"))
    save_final(trainer, tok, final)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return tracker.finish({
        **stats, "init": str(init), "algorithm": tcfg.algorithm, "steps": trainer.state.global_step,
        "reward_first": logs[0]["reward"] if logs else None,
        "reward_last": logs[-1]["reward"] if logs else None,
        "reward_curve": [round(h["reward"], 4) for h in logs], "checkpoint": str(final)})
