"""The loop's batches assembled ahead (lwm.train.data.Prefetch) are the batches it assembles
directly: the same tensors in the same order, from the start and after a resume at step k, and
an error in assembling one is raised in the training thread with its message."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from lwm.train.data import PackedShards, Prefetch, rank_batch

SEQ, ROWS, BATCH, ACCUM = 16, 13, 2, 3  # 13 rows: the 20 steps below cross four epochs


@pytest.fixture
def shards(tmp_path):
    """CPT shards with their loss mask, written as prepare's ShardPacker writes them."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    prefix = tmp_path / "train"
    ids = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    mask = IndexedDatasetBuilder(f"{prefix}_lossmask.bin", dtype=np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(ROWS):
        ids.add_document(rng.integers(1, 100, SEQ, dtype=np.int32), [SEQ])
        mask.add_document(rng.integers(0, 2, SEQ, dtype=np.uint8), [SEQ])
    ids.finalize(f"{prefix}.idx")
    mask.finalize(f"{prefix}_lossmask.idx")
    return prefix


def _steps(batches, dp=1, rank=0):
    def step_batches(s):
        return [rank_batch(batches, s, k, ACCUM, rank, dp, BATCH) for k in range(ACCUM)]
    return step_batches


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g) == len(w) == ACCUM
        for (gi, gl), (wi, wl) in zip(g, w):
            assert torch.equal(gi, wi) and torch.equal(gl, wl)


@pytest.mark.parametrize("start", [0, 7])
def test_prefetch_reads_the_batches_of_direct_assembly(shards, start):
    direct = _steps(PackedShards(shards, seed=5, pad_id=0))
    want = [direct(s) for s in range(start, 20)]
    # a fresh reader, as a resumed run has: batch k depends on (seed, k) only
    with Prefetch(_steps(PackedShards(shards, seed=5, pad_id=0)), range(start, 20), depth=2) as upcoming:
        got = list(upcoming)
    _same(got, want)
    assert any((labels == -100).any() for step in got for _, labels in step)  # the mask was read


def test_prefetch_per_rank_matches_direct(shards):
    dp = 2
    for rank in range(dp):
        direct = _steps(PackedShards(shards, seed=1, pad_id=0), dp, rank)
        with Prefetch(_steps(PackedShards(shards, seed=1, pad_id=0), dp, rank), range(6)) as upcoming:
            _same(list(upcoming), [direct(s) for s in range(6)])


class Failing:
    """Rows that cannot be read from batch 4 on."""
    n = 100

    def batch(self, k, batch_size):
        if k >= 4:
            raise OSError(f"{k}: Input/output error reading rows")
        return torch.full((batch_size, 4), k), torch.full((batch_size, 4), k)


def test_an_assembly_error_is_raised_in_the_training_thread():
    upcoming = Prefetch(lambda s: rank_batch(Failing(), s, 0, 1, 0, 1, 2), range(10))
    assert [int(next(upcoming)[0][0, 0]) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(OSError, match="4: Input/output error reading rows"):
        next(upcoming)
    upcoming.close()
    assert not upcoming._thread.is_alive()


def test_closing_stops_the_thread_on_a_full_queue():
    made = []
    upcoming = Prefetch(lambda s: made.append(s) or s, range(10**9), depth=3)
    assert next(upcoming) == 0
    deadline = time.monotonic() + 10
    while len(made) < 5 and time.monotonic() < deadline:  # 1, 2, 3 queued, 4 waits to be put
        time.sleep(0.01)
    upcoming.close()
    assert not upcoming._thread.is_alive() and len(made) == 5
