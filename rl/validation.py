"""RL's held-out check: prompts kept out of RL training (`rl.validation_prompts`), answered
greedily (as eval answers) and scored with the stage's own reward, before the first step and after
the last. With `rl.keep_best` the stage keeps its starting weights (the SFT model) when the final
weights do not score higher there: RL then cannot leave a model worse on held-out prompts than the
one it started from, and rl/metrics.json says which was kept and why.

The split takes prompts round-robin over domains (a seeded order within each), so every domain
is checked. The score is the macro mean over domains of the mean reward per prompt. Every rank
answers its share of the prompts with the unwrapped model (TRL's `unwrap_model_for_generation`:
ZeRO-3 gathers the weights, as for rollouts) and the sums are reduced, so every rank reaches the
same decision."""

from __future__ import annotations

import logging
import random
import shutil
from collections import defaultdict
from pathlib import Path

import datasets
import torch
from transformers import TrainerCallback
from trl.models import unwrap_model_for_generation

from lwm.endpoints.generate import generate
from lwm.tokenizer import encode_prompt

log = logging.getLogger("lwm.rl")


def split(data: datasets.Dataset, n: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(training prompts, n validation prompts taken round-robin over domains, in a seeded order
    within each); (data, None) for n=0."""
    if n <= 0:
        return data, None
    if n >= len(data):
        raise ValueError(f"rl.validation_prompts={n} leaves no prompt to train on: {len(data)} prompts fit "
                         "rl.max_prompt_length; lower rl.validation_prompts (0 = no held-out check)")
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    domain, by_domain = data["domain"], defaultdict(list)
    for i in order:
        by_domain[domain[i]].append(i)
    queues, picked = [by_domain[d] for d in sorted(by_domain)], []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    held = set(picked)
    return data.select([i for i in range(len(data)) if i not in held]), data.select(sorted(picked))


def held_out_reward(trainer, tok, val: datasets.Dataset, reward, batch_size: int, max_new_tokens: int) -> dict:
    """The reward of the model's greedy answers to `val`: {"macro", "by_domain", "prompts"}. A
    collective: every rank calls it and answers every world_size-th prompt."""
    rank, world = trainer.args.process_index, trainer.args.world_size
    mine = list(range(rank, len(val), world))
    domains = sorted(set(val["domain"]))
    sums = torch.zeros(2, len(domains), dtype=torch.float64)
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
        training = model.training
        model.eval()
        for start in range(0, len(mine), batch_size):
            rows = val.select(mine[start:start + batch_size])[:]
            texts = generate(model, tok, [encode_prompt(tok, p) for p in rows["prompt"]], max_new_tokens, 0.0)
            scores = reward.total(completions=texts, reference=rows["reference"], domain=rows["domain"],
                                  prompts=rows["prompt"], id=rows["id"])
            for d, s in zip(rows["domain"], scores):
                sums[0, domains.index(d)] += s
                sums[1, domains.index(d)] += 1
        model.train(training)
    if torch.distributed.is_initialized() and world > 1:
        sums = sums.to(trainer.accelerator.device)
        torch.distributed.all_reduce(sums)
        sums = sums.cpu()
    by_domain = {d: round(float(sums[0, i] / sums[1, i]), 6) for i, d in enumerate(domains)}
    return {"macro": round(sum(by_domain.values()) / len(by_domain), 6), "by_domain": by_domain,
            "prompts": len(val)}


class HeldOut(TrainerCallback):
    """Scores the starting weights once training begins (the model is wrapped, its weights still the
    init's); a resumed run takes that score from its checkpoint (`carried`) instead."""

    def __init__(self, trainer, tok, val, reward, tcfg, carried: dict | None):
        self.trainer, self.tok, self.val, self.reward, self.tcfg = trainer, tok, val, reward, tcfg
        self.init = carried

    def measure(self) -> dict:
        return held_out_reward(self.trainer, self.tok, self.val, self.reward, self.tcfg.batch_size,
                               self.tcfg.max_completion_length)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.init is not None:
            return
        if state.global_step > 0:
            raise RuntimeError(
                f"rl: the checkpoint resumed at step {state.global_step} holds no held-out reward of the "
                "starting weights (it was written without rl.validation_prompts); start over with "
                "rl.resume=never, or set rl.validation_prompts=0")
        self.init = self.measure()
        log.info("rl: held-out reward of the starting weights %.4f over %d prompts",
                 self.init["macro"], self.init["prompts"])


def keep(init: dict, final: dict, keep_best: bool) -> str:
    """Which weights the stage saves: "rl", or "init" when rl.keep_best and the final weights do
    not score higher than the starting ones on the held-out prompts."""
    return "init" if keep_best and final["macro"] <= init["macro"] else "rl"


def copy_init(init: Path, final: Path) -> None:
    """final/ becomes a copy of the starting checkpoint (its weights, config and tokenizer)."""
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(init, final, ignore=shutil.ignore_patterns("complete"))
