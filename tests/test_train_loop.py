"""The one optimizer/schedule and the one loop's parts, checked against the outcome:

- `sft` on hf, deepspeed and megatron builds the same optimizer and learning-rate curve from one
  config: the TRL stages' as transformers' Trainer itself builds them from the rendered arguments
  (optimizer class and kwargs, decayed parameters, `get_scheduler`), Megatron's from its
  OptimizerConfig and the rate the loop sets each step;
- warmup is capped for short runs;
- the sampler draws one permutation per epoch and reads the rows the per-row definition names;
- the hf engine saves and stops on the preemption signal, and the rerun ends where an
  uninterrupted run does.
"""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest

from lwm.tracking import RunPaths
from tests.conftest import make_cfg
from tests.helpers.checkpoint import assert_same_run

OPTIM = ["sft.lr=3e-4", "sft.weight_decay=0.1", "sft.warmup_steps=5", "sft.max_steps=40",
         "sft.adam_betas=[0.9,0.98]", "sft.adam_eps=1e-7", "sft.min_lr_ratio=0.05"]


def _trainer_optimizer(cfg, tmp_path, tiny_model):
    """What transformers' Trainer builds from our rendered arguments: (optimizer, lr per step)."""
    from transformers import Trainer, get_scheduler
    from trl import SFTConfig

    from lwm.train.trl import backend_args, trainer_args
    backend = backend_args(cfg, cfg.sft, 1, "sft")
    args = SFTConfig(**trainer_args(cfg, cfg.sft, tmp_path / "sft", **backend))
    if "deepspeed" in backend:
        # the Trainer builds both only when DeepSpeed's config holds neither
        assert "optimizer" not in args.hf_deepspeed_config.config
        assert "scheduler" not in args.hf_deepspeed_config.config
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, tiny_model)
    decay = set(Trainer.get_decay_parameter_names(None, tiny_model))
    named = list(tiny_model.named_parameters())
    opt = cls([{"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
               {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}], **kwargs)
    sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(args.max_steps),
                          num_training_steps=args.max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    lrs = []
    for _ in range(args.max_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, lrs


@pytest.fixture
def tiny_model(tmp_path):
    from lwm.models.hf import build_model
    return build_model(make_cfg(tmp_path).model, 64)


def test_sft_builds_the_same_optimizer_and_schedule_on_every_backend(tmp_path, tiny_model, monkeypatch):
    from lwm.train.engines.megatron import optimizer_config
    from lwm.train.optim import spec, torch_optimizer
    monkeypatch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
    built = {}
    for backend in ("hf", "deepspeed"):
        cfg = make_cfg(tmp_path, f"backend={backend}", "backend.dtype=float32", *OPTIM)
        built[backend] = _trainer_optimizer(cfg, tmp_path, tiny_model)
    (hf_opt, hf_lrs), (ds_opt, ds_lrs) = built["hf"], built["deepspeed"]
    assert ds_lrs == hf_lrs
    assert [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in ds_opt.param_groups] == \
        [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in hf_opt.param_groups]

    cfg = make_cfg(tmp_path, "backend=megatron", *OPTIM)
    s = spec(cfg.sft)
    # the engines of the one loop (torch, DeepSpeed CPT, Megatron) set spec.lr_at(step) each step
    assert [s.lr_at(k) for k in range(s.max_steps)] == pytest.approx(hf_lrs, rel=1e-12, abs=1e-15)
    mc = optimizer_config(cfg.backend, s)
    assert (mc.lr, mc.adam_beta1, mc.adam_beta2, mc.adam_eps, mc.weight_decay, mc.clip_grad) == \
        (3e-4, 0.9, 0.98, 1e-7, 0.1, cfg.sft.max_grad_norm)
    assert mc.min_lr == pytest.approx(3e-4 * 0.05)
    ours = torch_optimizer(tiny_model, s)
    assert [(len(g["params"]), g["betas"], g["eps"], g["weight_decay"]) for g in ours.param_groups] == \
        [(len(g["params"]), g["betas"], g["eps"], g["weight_decay"]) for g in hf_opt.param_groups]
    # Megatron's default no-decay rule (biases and 1-D parameters) picks the same parameters
    no_decay = {id(p) for p in hf_opt.param_groups[1]["params"]}
    assert no_decay == {id(p) for n, p in tiny_model.named_parameters() if n.endswith(".bias") or p.dim() == 1}


def test_warmup_is_capped_on_short_runs(tmp_path):
    from lwm.train.optim import spec
    cfg = make_cfg(tmp_path, "rl.max_steps=20", "rl.warmup_steps=10", "cpt.max_steps=1000", "cpt.warmup_steps=10")
    assert spec(cfg.rl).warmup_steps == 2       # 10% of 20 steps
    assert spec(cfg.cpt).warmup_steps == 10     # the asked 10, under 10% of 1000
    assert spec(cfg.cpt).lr_at(0) == 0.0 and spec(cfg.cpt).lr_at(10) == pytest.approx(cfg.cpt.lr)
    assert spec(cfg.cpt).lr_at(1000) == pytest.approx(cfg.cpt.lr * cfg.cpt.min_lr_ratio)


def test_sampler_draws_one_permutation_per_epoch(monkeypatch):
    from lwm.train import data
    calls = []
    real = np.random.default_rng
    monkeypatch.setattr(data.np.random, "default_rng", lambda seed: calls.append(seed) or real(seed))
    order = data.EpochOrder(n=50, seed=7)
    got = [order(j) for j in range(125)]           # two and a half epochs
    want = [int(real(7 + j // 50).permutation(50)[j % 50]) for j in range(125)]
    assert got == want
    assert calls == [7, 8, 9]
    rows = [{"input_ids": [i, i + 1], "labels": [-100, i + 1]} for i in range(5)]
    ids, labels = data.RowBatches(rows, 4, pad_id=0, seed=3).batch(0, 2)
    assert ids.shape == (2, 4) and (labels[:, 2:] == -100).all()


def test_hf_engine_saves_and_stops_on_preemption(run_copy, prepared_run, tmp_path, monkeypatch):
    from pretrain.train import train
    steps = ["cpt.max_steps=4", "cpt.save_every=100", "cpt.warmup_steps=1", "cpt.batch_size=2"]
    whole = tmp_path / "whole"
    shutil.copytree(prepared_run, whole)
    train(make_cfg(whole, *steps), RunPaths(whole))
    flag = tmp_path / "preempt"
    flag.touch()
    monkeypatch.setenv("LWM_PREEMPT_FILE", str(flag))
    assert train(make_cfg(run_copy, *steps), RunPaths(run_copy)) == {"steps": 1, "preempted": True}
    state = json.loads((run_copy / "cpt" / "checkpoints" / "step_0000001" / "state.json").read_text())
    assert state["step"] == 1 and state["dp_size"] == 1
    flag.unlink()
    metrics = train(make_cfg(run_copy, *steps), RunPaths(run_copy))
    assert metrics["resumed_from"].endswith("step_0000001") and metrics["steps"] == 4
    assert_same_run(whole, run_copy)
