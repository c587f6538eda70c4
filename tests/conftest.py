"""Shared fixtures: configs composed as the CLI composes them, and a tiny prepared run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from launch import CONFIG_DIR
from lwm.config import register_configs
from lwm.tracking import RunPaths

os.environ.setdefault("WANDB_MODE", "offline")
DATA = Path(__file__).parent / "data"
TRAJECTORIES = DATA / "terminal_trajectories.jsonl"

# A model small enough for tests, the same architecture as the default.
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=32", "model.intermediate_size=128", "model.moe_intermediate_size=64",
        "model.num_experts=4", "data.seq_len=256", "data.vocab_size=512", "wandb.mode=disabled"]


def make_cfg(run_dir: Path, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("config", overrides=[f"run_dir={run_dir}", *TINY, *overrides])


def collect_cfg(domain: str, n: int, **overrides):
    """A structured config for calling `collect()` directly: one domain, n episodes, in-process."""
    from omegaconf import OmegaConf
    from lwm.config import LWMConfig
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.data.domains = [domain]
    cfg.collect.workers = 1
    cfg.collect.num_trajectories = n
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA: skipped, by name, on a machine without it (bench/ runs
    them on a GPU machine)."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_job_identity_leaks():
    """Code under test may join a process group and write RANK/WORLD_SIZE/MASTER_* into
    os.environ (pdist.init does for submitit tasks); a later test, or the processes it starts,
    would then believe it is one rank of a job. Each test gets them back as they were."""
    before = {k: os.environ.get(k) for k in LAUNCH_VARS}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory):
    """A run directory with `prepare` done on the recorded terminal trajectories."""
    from data_pipeline.prepare import prepare
    root = tmp_path_factory.mktemp("run")
    cfg = make_cfg(root, f"prepare.input={TRAJECTORIES}")
    prepare(cfg, RunPaths(root))
    return root


@pytest.fixture
def run_copy(prepared_run, tmp_path):
    """A private copy of the prepared run, for tests that train."""
    dst = tmp_path / "run"
    shutil.copytree(prepared_run, dst)
    return dst


@pytest.fixture(scope="session")
def sft_init(prepared_run, tmp_path_factory):
    """A fresh tiny model (seed 0) with the prepared run's tokenizer, saved where `sft.init` can
    point, so SFT tests need no CPT run."""
    import torch
    from lwm.models.hf import build_model
    from lwm.tokenizer import load_tokenizer
    tok = load_tokenizer(prepared_run / "prepare" / "tokenizer")
    torch.manual_seed(0)
    init = tmp_path_factory.mktemp("sft_init")
    build_model(make_cfg(prepared_run).model, len(tok), tok).save_pretrained(init, safe_serialization=True)
    tok.save_pretrained(init)
    return init


def free_port() -> int:
    """A port for torchrun's rendezvous that no other test is using right now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(stage: str, run_dir: Path, *overrides: str, ranks: int = 1, env: dict | None = None,
            timeout: int = 600):
    """`lwm <stage>` on the tiny model in a subprocess (under torchrun when ranks > 1); fails the
    test with the end of its stderr unless it succeeds."""
    import subprocess
    import sys
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={free_port()}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    res = subprocess.run([*launch, "-m", "launch.cli", stage, f"hydra.run.dir={run_dir}", *TINY, *overrides],
                         env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return res
