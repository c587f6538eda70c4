"""rl.algorithm=gspo is GSPO, not GRPO under another name: the GRPOConfig rl/train.py builds
carries TRL's documented GSPO recipe, a no-op (fully on-policy) GSPO is refused, and on one
off-policy batch TRL's own loss gives GSPO a gradient that differs from GRPO's and equals the
sequence-level objective of the GSPO paper, written out here."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from lwm.models.hf import build_model
from lwm.tokenizer import train_tokenizer
from rl.train import algorithm_args, grpo_args
from tests.conftest import make_cfg

FP32 = "backend.dtype=float32"


def config(tmp_path, *overrides: str) -> GRPOConfig:
    cfg = make_cfg(tmp_path, FP32, *overrides)
    return GRPOConfig(**grpo_args(cfg, cfg.rl, tmp_path))


def test_gspo_carries_trls_documented_recipe(tmp_path):
    # TRL docs, paper index, "Group Sequence Policy Optimization": sequence-level ratio,
    # loss_type "grpo", epsilon 3e-4 / epsilon_high 4e-4, steps_per_generation 4x grad_accum.
    for accum in (1, 2):
        args = config(tmp_path, "rl.algorithm=gspo", f"rl.grad_accum={accum}")
        assert args.importance_sampling_level == "sequence" and args.loss_type == "grpo"
        assert args.epsilon == 3e-4 and args.epsilon_high == 4e-4 and args.beta == 0.0
        assert args.gradient_accumulation_steps == accum and args.steps_per_generation == 4 * accum
        assert args.num_iterations == 1 and args.generation_batch_size == 4 * accum * args.per_device_train_batch_size
    # grpo stays TRL's defaults: token-level, "dapo", epsilon 0.2, on-policy
    args = config(tmp_path, "rl.algorithm=grpo")
    assert args.importance_sampling_level == "token" and args.loss_type == "dapo"
    assert args.epsilon == 0.2 and args.epsilon_high is None
    assert args.steps_per_generation == args.gradient_accumulation_steps and args.num_iterations == 1


def test_explicit_keys_win_and_a_no_op_gspo_is_refused(tmp_path):
    args = config(tmp_path, "rl.algorithm=gspo", "rl.epsilon=0.01", "rl.steps_per_generation=2")
    assert args.epsilon == 0.01 and args.epsilon_high is None and args.steps_per_generation == 2
    args = config(tmp_path, "rl.algorithm=gspo", "rl.epsilon_high=1e-3", "rl.loss_type=luspo")
    assert args.epsilon == 3e-4 and args.epsilon_high == 1e-3 and args.loss_type == "luspo"
    on_policy = make_cfg(tmp_path, "rl.algorithm=gspo", "rl.steps_per_generation=1")
    with pytest.raises(ValueError, match="rl.steps_per_generation=1 .*fully on-policy.*rl.num_iterations"):
        algorithm_args(on_policy.rl)
    # reusing each micro-batch is off-policy too
    assert algorithm_args(make_cfg(tmp_path, "rl.algorithm=gspo", "rl.steps_per_generation=1",
                                   "rl.num_iterations=2").rl)["num_iterations"] == 2
    with pytest.raises(ValueError, match="rl.algorithm: 'ppo'"):
        algorithm_args(make_cfg(tmp_path, "rl.algorithm=ppo").rl)


PROMPT = 5
LENGTHS = [6, 4, 6, 5, 3, 6]           # completion tokens per sequence (the rest is padding)
ADVANTAGES = [1.0, 1.0, -1.0, -0.5, -1.0, 0.7]
# log pi - log pi_old per sequence, around GSPO's clip range [1 - 3e-4, 1 + 4e-4]: inside,
# above with A > 0 (clipped), below with A < 0 (clipped), inside, above with A < 0 (the min keeps
# the unclipped term), above with A > 0 (clipped)
OFFSETS = [2e-4, 1e-3, -1e-3, -1e-4, 1e-3, 5e-4]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gspo")
    tok = train_tokenizer(["the world model predicts the next observation"] * 20, 300, tmp / "tok")
    torch.manual_seed(0)
    # No router load-balancing term (TRL adds it to the loss of an MoE): the policy objective alone.
    return build_model(make_cfg(tmp, "model.router_aux_loss_coef=0.0").model, len(tok), tok).float(), tok, tmp


def trainer_for(policy, algorithm: str) -> GRPOTrainer:
    model, tok, tmp = policy
    cfg = make_cfg(tmp, FP32, f"rl.algorithm={algorithm}")
    args = GRPOConfig(**grpo_args(cfg, cfg.rl, tmp / algorithm))
    data = Dataset.from_dict({"prompt": ["the world"] * 8})
    trainer = GRPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=tok,
                          reward_funcs=lambda completions, **_: [0.0] * len(completions))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # set by the training loop
    return trainer


def completion_logps(model, input_ids, attention_mask) -> torch.Tensor:
    """log pi(token | prefix) of each completion token, from the plain forward (full logits)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, PROMPT - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, PROMPT:, None]).squeeze(-1)


def off_policy_batch(policy) -> dict:
    """One micro-batch of a generation the policy has moved away from since: old log-probs set
    to the current ones minus OFFSETS (plus zero-mean noise per sequence)."""
    model, tok, _ = policy
    g = torch.Generator().manual_seed(1)
    batch, width = len(LENGTHS), max(LENGTHS)
    prompt_ids = torch.randint(0, len(tok), (batch, PROMPT), generator=g)
    completion_ids = torch.randint(0, len(tok), (batch, width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(LENGTHS)[:, None]).long()
    completion_ids = completion_ids.masked_fill(mask == 0, tok.pad_token_id)
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    with torch.no_grad():
        current = completion_logps(model, input_ids, torch.cat([torch.ones_like(prompt_ids), mask], 1))
    noise = 1e-4 * torch.randn(batch, width, generator=g) * mask
    noise = noise - (noise.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)) * mask
    old = current - (torch.tensor(OFFSETS)[:, None] + noise) * mask
    return {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
            "completion_ids": completion_ids, "completion_mask": mask,
            "advantages": torch.tensor(ADVANTAGES), "old_per_token_logps": old,
            "num_items_in_batch": mask.sum()}


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def gspo_paper_loss(model, batch: dict, eps_low: float, eps_high: float, accum: int) -> torch.Tensor:
    """GSPO (arXiv 2507.18071, eq. 5-7): s_i = exp(mean over y_i's tokens of log pi - log pi_old);
    J = mean over sequences of min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i); the loss is
    -J, divided by the accumulation steps as TRL's loss_type "grpo" does."""
    mask = batch["completion_mask"].float()
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    logps = completion_logps(model, input_ids, torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1))
    s = torch.exp(((logps - batch["old_per_token_logps"]) * mask).sum(-1) / mask.sum(-1))
    a = batch["advantages"]
    objective = torch.minimum(s * a, torch.clamp(s, 1 - eps_low, 1 + eps_high) * a)
    return -objective.mean() / accum, s


def test_gspo_gradient_is_the_papers_and_not_grpos(policy):
    batch = off_policy_batch(policy)
    gspo, grpo = trainer_for(policy, "gspo"), trainer_for(policy, "grpo")

    gspo_loss = gspo._compute_loss(gspo.model, batch)
    gspo_loss.backward()
    gspo_grads = grads(gspo.model)
    grpo._compute_loss(grpo.model, batch).backward()
    grpo_grads = grads(grpo.model)

    # (a) off-policy, GSPO's gradient is not GRPO's
    assert gspo_grads.keys() == grpo_grads.keys()
    assert any(not torch.allclose(gspo_grads[n], grpo_grads[n], rtol=1e-3, atol=1e-9) for n in gspo_grads)

    # (b) TRL's GSPO loss and gradient are the paper's sequence-level objective
    args = gspo.args
    expected, s = gspo_paper_loss(gspo.model, batch, args.epsilon, args.epsilon_high,
                                  args.gradient_accumulation_steps)
    # the batch exercises both sides of the clip: some sequences clipped, some not
    clipped = (s > 1 + args.epsilon_high) | (s < 1 - args.epsilon)
    assert 0 < int(clipped.sum()) < len(LENGTHS)
    assert torch.allclose(gspo_loss, expected, rtol=1e-5, atol=1e-7)
    expected.backward()
    paper_grads = grads(gspo.model)
    assert paper_grads.keys() == gspo_grads.keys()
    for n in gspo_grads:
        assert torch.allclose(gspo_grads[n], paper_grads[n], rtol=1e-4, atol=1e-8), n
    # the gradient is non-trivial: the unclipped sequences move the policy
    assert any(g.abs().max() > 0 for g in gspo_grads.values())
