"""Ablations by override: a sweep's jobs share the stages their settings share (computed once,
whether later jobs find them finished or wait for them), read a base run's or another run's
stage outputs, and one report labels each row by the settings that differ."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.share import link_upstream
from tests.conftest import make_cfg, run_cli

SMALL = ["collect.num_trajectories=10", "data.heldout_fraction=0.3", "cpt.max_steps=2", "cpt.batch_size=4",
         "sft.max_steps=2", "sft.batch_size=4", "rl.max_steps=1", "rl.batch_size=4", "rl.num_generations=4",
         "rl.max_completion_length=16", "eval.max_samples=4", "eval.max_new_tokens=16",
         "eval.controllability_samples=0", "eval.plots=false"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """`lwm run -m sft.lr=... rl.lr=...`: a 2x2 ablation from collection to eval."""
    root = tmp_path_factory.mktemp("sweeps")
    sweep = root / "abl-sweep"
    res = run_cli("run", root / "unused", "-m", "run_name=abl", f"hydra.sweep.dir={sweep}", *SMALL,
                  "sft.lr=1e-4,1e-3", "rl.lr=1e-6,1e-5", timeout=1500)
    return sweep, res.stdout + res.stderr


def test_a_2x2_ablation_computes_each_shared_stage_once(ablation):
    sweep, log = ablation
    shared = sorted(p.name.split("-")[0] for p in (sweep / "_shared").iterdir() if p.is_dir())
    assert shared == ["collect", "cpt", "prepare", "rl", "rl", "rl", "rl", "sft", "sft"]
    jobs = sorted(sweep.glob("job*"))
    assert len(jobs) == 4
    for stage in ("collect", "prepare", "cpt"):
        targets = {(job / stage).resolve() for job in jobs}
        assert len(targets) == 1 and all((job / stage).is_symlink() for job in jobs), stage
    assert len({(job / "sft").resolve() for job in jobs}) == 2
    assert len({(job / "rl").resolve() for job in jobs}) == 4
    assert all((job / "eval" / "metrics.json").exists() for job in jobs)   # eval is each job's own
    # later jobs found the shared stages finished instead of computing them again
    assert log.count("is up to date") == 3 and log.count("cpt/final is already trained") == 3


def test_the_report_labels_rows_by_the_two_knobs(ablation, tmp_path):
    sweep, _ = ablation
    res = subprocess.run([sys.executable, "-m", "eval.report", *map(str, sorted(sweep.glob("job*"))),
                          "--out", str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Runs differ in: rl.lr, sft.lr" in res.stdout
    for lr_rl in ("1e-06", "1e-05"):
        for lr_sft in ("0.0001", "0.001"):
            assert f"| rl.lr={lr_rl}, sft.lr={lr_sft} / rl |" in res.stdout
    assert {p.name for p in tmp_path.glob("knob_*.png")} == {"knob_rl.lr.png", "knob_sft.lr.png"}


def test_a_later_stage_sweep_reads_the_base_run(ablation, tmp_path):
    """`lwm run run_name=base` once, then `lwm sft -m sft.lr=a,b run_name=base`: both jobs train on
    the base run's prepared data and CPT model (here the base run's stages are the ablation's)."""
    sweep, _ = ablation
    base = tmp_path / "base"
    base.mkdir()
    for stage in ("prepare", "cpt"):
        (base / stage).symlink_to((sweep / "job0" / stage).resolve())
    run_cli("sft", tmp_path / "unused", "-m", "run_name=base", f"hydra.sweep.dir={tmp_path / 'base-sweep'}",
            *SMALL, "sft.lr=2e-4,5e-4")
    jobs = sorted((tmp_path / "base-sweep").glob("job*"))
    assert len(jobs) == 2
    for job in jobs:
        assert (job / "cpt").resolve() == (base / "cpt").resolve()
        assert (job / "sft" / "final" / "complete").exists()
    assert (jobs[0] / "sft").resolve() != (jobs[1] / "sft").resolve()


def test_reuse_names_its_conflicts(tmp_path):
    cfg = make_cfg(tmp_path, f"reuse.cpt={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="reuse.cpt=.*no such folder"):
        link_upstream(cfg, tmp_path, ["sft"])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cpt").mkdir()
    cfg = make_cfg(tmp_path, f"reuse.cpt={tmp_path / 'elsewhere'}")
    with pytest.raises(FileExistsError, match="is a folder of this run.*reuse.cpt"):
        link_upstream(cfg, tmp_path, ["sft"])
    run = tmp_path / "run"
    link_upstream(make_cfg(run, f"reuse.cpt={tmp_path / 'elsewhere'}"), run, ["sft"])
    assert (run / "cpt").resolve() == (tmp_path / "elsewhere").resolve()
