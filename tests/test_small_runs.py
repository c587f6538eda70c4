"""A run too small to hold anything out says so before training, and never writes an empty
shard (once: prepare wrote an empty held-out .bin and CPT stopped with `cannot mmap an empty file`)."""

from __future__ import annotations

import json

import pytest

from lwm.tracking import RunPaths
from tests.conftest import TRAJECTORIES, make_cfg


def test_nothing_held_out_is_refused_before_training(tmp_path):
    from data_pipeline.prepare import prepare
    small = tmp_path / "eight.jsonl"
    small.write_text("".join(TRAJECTORIES.read_text().splitlines(keepends=True)[:8]))
    cfg = make_cfg(tmp_path, f"prepare.input={small}", "data.heldout_fraction=0.0001")
    with pytest.raises(ValueError, match="none of the 8 kept trajectories fell into the held-out split.*"
                                         "collect.num_trajectories.*data.heldout_fraction"):
        prepare(cfg, RunPaths(tmp_path))
    assert not (tmp_path / "prepare").exists() and not (tmp_path / "prepare.partial").exists()


def test_every_published_shard_holds_sequences(prepared_run):
    from lwm.train.data import index_header
    manifest = json.loads((prepared_run / "prepare" / "manifest.json").read_text())
    assert manifest["heldout_missing_domains"] == []
    for idx in (prepared_run / "prepare" / "cpt").glob("*.idx"):
        assert index_header(idx)[1] > 0, idx
