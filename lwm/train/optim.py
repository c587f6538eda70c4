"""One optimizer and one learning-rate schedule for every stage and every backend.

AdamW with the stage's betas, epsilon and weight decay (not on biases and norm weights), linear
warmup from 0, then cosine decay to `min_lr_ratio` of the peak: transformers' `cosine_with_min_lr`
schedule, so the TRL stages (rendered into TrainingArguments by `trl_optim_args`) and the
engines of the one loop (which set `lr_at(step)` before each optimizer step: torch, DeepSpeed,
Megatron) follow the same curve step for step. Warmup is capped at `max_warmup_fraction` of the run, so a short
run is not spent warming up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class OptimSpec:
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    max_grad_norm: float
    warmup_steps: int          # after the cap
    max_steps: int
    min_lr_ratio: float

    def lr_factor(self, step: int) -> float:
        """The multiplier of `lr` for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, cosine * (1.0 - self.min_lr_ratio) + self.min_lr_ratio)

    def lr_at(self, step: int) -> float:
        return self.lr * self.lr_factor(step)


def spec(tcfg) -> OptimSpec:
    """The optimizer of a training stage's config (cfg.cpt, cfg.sft or cfg.rl)."""
    if len(tcfg.adam_betas) != 2:
        raise ValueError(f"adam_betas = {list(tcfg.adam_betas)}: expected two numbers, e.g. [0.9, 0.95]")
    if not 0.0 <= tcfg.min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio = {tcfg.min_lr_ratio}: expected a fraction of lr in [0, 1]")
    if not 0.0 <= tcfg.max_warmup_fraction <= 1.0:
        raise ValueError(f"max_warmup_fraction = {tcfg.max_warmup_fraction}: expected a fraction in [0, 1]")
    warmup = min(tcfg.warmup_steps, int(tcfg.max_steps * tcfg.max_warmup_fraction))
    return OptimSpec(lr=tcfg.lr, betas=(float(tcfg.adam_betas[0]), float(tcfg.adam_betas[1])),
                     eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay, max_grad_norm=tcfg.max_grad_norm,
                     warmup_steps=max(0, warmup), max_steps=tcfg.max_steps, min_lr_ratio=tcfg.min_lr_ratio)


def decay_parameter_names(model) -> set[str]:
    """Parameters that take weight decay: all but biases and norm weights. The rule is the Trainer's
    own (a method that reads nothing of the Trainer), so the TRL stages decay the same parameters;
    Megatron's default (no decay on biases and 1-D parameters) picks the same ones."""
    from transformers import Trainer
    return set(Trainer.get_decay_parameter_names(None, model))


def torch_optimizer(model, s: OptimSpec):
    """AdamW over `model`'s trainable parameters; the caller sets the rate before each step
    (`lr_at`), so no scheduler state has to follow a checkpoint."""
    import torch
    decay = decay_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": s.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=s.lr_at(0), betas=s.betas, eps=s.eps)


def trl_optim_args(s: OptimSpec) -> dict:
    """The same optimizer and schedule as TrainingArguments fields (TRL's SFT and GRPO trainers)."""
    return dict(learning_rate=s.lr, adam_beta1=s.betas[0], adam_beta2=s.betas[1], adam_epsilon=s.eps,
                weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm, optim="adamw_torch",
                warmup_steps=s.warmup_steps, lr_scheduler_type="cosine_with_min_lr",
                lr_scheduler_kwargs={"min_lr_rate": s.min_lr_ratio})
