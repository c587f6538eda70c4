"""Runs one stage, or all of them in order, inside the run directory Hydra chose."""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from launch import preempt
from lwm import domains
from lwm.config import STAGES
from lwm.tracking import RunPaths

log = logging.getLogger("lwm")


def _stage_fn(name: str):
    # Imported lazily: `lwm collect` must not pay for importing TRL.
    if name == "collect":
        from data_pipeline.collect.runner import collect
        return lambda cfg, paths: collect(cfg, paths.stage("collect"))
    if name == "ingest":
        from data_pipeline.ingest import ingest
        return ingest
    if name == "serve":
        from serve.server import serve
        return serve
    if name == "prepare":
        from data_pipeline.prepare import prepare
        return prepare
    if name == "cpt":
        from pretrain.train import train
        return train
    if name == "sft":
        from sft.train import train
        return train
    if name == "rl":
        from rl.train import train
        return train
    if name == "eval":
        from eval.run import evaluate
        return evaluate
    raise ValueError(f"unknown stage '{name}'")


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
    for path in cfg.data.extra_domains.values():
        domains.register_path(path)
    for name in cfg.data.domains:
        domains.get_domain(name)  # fail now, not after collection, on an unknown domain
    return RunPaths(Path(cfg.run_dir))


def run_stage(cfg: DictConfig):
    paths = setup(cfg)
    if cfg.stage != "run":
        log.info("stage %s -> %s", cfg.stage, paths.root / cfg.stage)
        result = _stage_fn(cfg.stage)(cfg, paths)
        preempt.requeue_if_preempted(result, cfg.cluster.requeue)
        return result
    results = {}
    for name in STAGES:
        log.info("=== stage %s ===", name)
        if name == "eval":
            cfg.eval.compare_stages = True
        results[name] = _stage_fn(name)(cfg, paths)
        preempt.requeue_if_preempted(results[name], cfg.cluster.requeue)
    return results
