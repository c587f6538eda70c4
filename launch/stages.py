"""Runs one stage, or all of them in order, inside the run directory Hydra chose."""

from __future__ import annotations

import importlib
import logging
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from launch import identity, share, upstream
from launch.lock import job_rank, run_lock
from lwm import domains
from lwm.tracking import RunPaths
from lwm.train import preempt

log = logging.getLogger("lwm")


# Every command of `lwm`, in one table: name -> "module:function" taking (cfg, RunPaths). The
# pipeline stages are listed in the order `lwm run` runs them. Imported lazily, so `lwm collect`
# does not pay for importing TRL. Adding a stage: its package, plus one line here.
PIPELINE = {
    "collect": "data_pipeline.collect.runner:collect_stage",
    "prepare": "data_pipeline.prepare:prepare",
    "cpt": "pretrain.train:train",
    "sft": "sft.train:train",
    "rl": "rl.train:train",
    "eval": "eval.run:evaluate",
}
TOOLS = {
    "ingest": "data_pipeline.ingest:ingest",
    "serve": "serve.server:serve",
}
STAGES = tuple(PIPELINE)
COMMANDS = STAGES + ("run", *TOOLS)


def _stage_fn(name: str):
    target = PIPELINE.get(name) or TOOLS.get(name)
    if target is None:
        raise ValueError(f"unknown stage '{name}': expected one of {', '.join(COMMANDS)}")
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def setup(cfg: DictConfig) -> RunPaths:
    # Megatron-core is used for its data side only; its import-time notices about missing
    # Transformer Engine / Apex are noise here.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.backend.num_threads:
        torch.set_num_threads(cfg.backend.num_threads)
    os.environ.setdefault("WANDB_MODE", cfg.wandb.mode)
    domains.register_extra(cfg.data.extra_domains)
    # a declared domain is one of the run's (unless data.domains names its own selection)
    cfg.data.domains = domains.run_domains(cfg.data.domains, cfg.data.extra_domains)
    for name in cfg.data.domains:
        domains.get_domain(name)  # fail now, not after collection, on an unknown domain
    return RunPaths(Path(cfg.run_dir))


def _run_one(name: str, cfg: DictConfig, paths: RunPaths):
    upstream.check(name, cfg, paths.root)  # a missing input names the command that makes it
    with share.shared_stage(cfg, name, paths.root):  # a sweep's jobs share what they share
        if job_rank() == 0:
            identity.check(cfg, name, paths.root)  # refuse, start over, or record, before any work
        result = _stage_fn(name)(cfg, paths)
    preempt.requeue_if_preempted(result, cfg.cluster.requeue)
    return result


def run_stage(cfg: DictConfig):
    paths = setup(cfg)
    with run_lock(paths.root, cfg.stage):
        share.link_upstream(cfg, paths.root, list(STAGES) if cfg.stage == "run" else [cfg.stage])
        if cfg.stage != "run":
            log.info("stage %s -> %s", cfg.stage, paths.root / cfg.stage)
            return _run_one(cfg.stage, cfg, paths)
        results = {}
        for name in STAGES:
            log.info("=== stage %s ===", name)
            if name == "eval":
                cfg.eval.compare_stages = True
            results[name] = _run_one(name, cfg, paths)
        return results
