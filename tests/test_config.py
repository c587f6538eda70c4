"""The CLI and its typed config: typos and wrong types fail at start-up naming the key."""

import json
import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from tests.conftest import TRAJECTORIES, make_cfg


def lwm(*args, cwd=None):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_typo_fails_naming_the_key():
    res = lwm("cpt", "cpt.max_stepz=3", "--cfg", "job")
    assert res.returncode != 0
    assert "unknown key 'cpt.max_stepz'; did you mean cpt.max_steps?" in res.stderr


def test_wrong_type_fails_naming_the_key():
    res = lwm("sft", "sft.lr=fast", "--cfg", "job")
    assert res.returncode != 0
    assert "sft.lr" in res.stderr


def test_typo_in_compose_api(tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError), match="num_layerz"):
        make_cfg(tmp_path, "model.num_layerz=2")


def test_unknown_stage_lists_the_commands():
    res = lwm("train")
    assert res.returncode == 2 and "unknown command 'train'" in res.stderr
    assert "commands: collect, prepare, cpt, sft, rl, eval, run, ingest, serve" in res.stderr


def test_cfg_job_prints_composed_config():
    res = lwm("rl", "rl.num_generations=8", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    assert "stage: rl" in res.stdout and "num_generations: 8" in res.stdout
    assert "model:" in res.stdout and "cluster:" in res.stdout


def test_sweep_runs_each_job_in_its_own_dir(tmp_path):
    res = lwm("prepare", "-m", f"prepare.input={TRAJECTORIES}", "data.heldout_fraction=0.1,0.3",
              "data.vocab_size=512", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    manifests = sorted((tmp_path / "sweep").glob("*/prepare/manifest.json"))
    assert [m.parts[-3] for m in manifests] == ["job0", "job1"]
    # each job held out by its own value (job 0: 10%, job 1: 30% of the same 30 trajectories)
    splits = [json.loads(m.read_text())["split"] for m in manifests]
    assert [s["train"] + s["heldout"] for s in splits] == [30, 30]
    assert 0 < splits[0]["heldout"] < splits[1]["heldout"]
