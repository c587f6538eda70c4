"""Batches for the training loop: (input ids, labels) pairs where batch k depends only on
(seed, k), so a resumed run, or a run on another number of data-parallel ranks, reads exactly
the rows an uninterrupted single-process run reads.

- PackedShards: fixed-length packed sequences from Megatron .bin/.idx (CPT), with the loss mask
  prepare wrote beside them (<prefix>_lossmask) when there is one;
- RowBatches: tokenized rows of unequal length (SFT samples), one per row, right-padded.

Both visit their rows in one random order per epoch, computed once per epoch and cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class EpochOrder:
    """Row j of the endless stream is row perm(seed + epoch)[j mod n]: one permutation per epoch,
    kept until the stream moves to another epoch."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise ValueError("no rows to train on")
        self.n, self.seed, self._epoch, self._perm = n, seed, None, None

    def __call__(self, j: int) -> int:
        epoch, i = divmod(j, self.n)
        if epoch != self._epoch:
            self._perm, self._epoch = np.random.default_rng(self.seed + epoch).permutation(self.n), epoch
        return int(self._perm[i])


def labels_for(ids: torch.Tensor, mask: torch.Tensor | None, pad_id: int) -> torch.Tensor:
    """Full-LM labels: every token but padding and the tokens prepare's loss mask leaves out."""
    labels = ids.clone()
    labels[ids == pad_id] = -100
    if mask is not None:
        labels[~mask] = -100
    return labels


class PackedShards:
    def __init__(self, prefix: Path, seed: int, pad_id: int):
        from megatron.core.datasets.indexed_dataset import IndexedDataset
        if not Path(str(prefix) + ".idx").exists():
            raise FileNotFoundError(f"CPT shards {prefix}.bin/.idx not found: run `lwm prepare` first")
        self.data, self.pad_id = IndexedDataset(str(prefix)), pad_id
        mask = Path(str(prefix) + "_lossmask.idx")
        self.mask = IndexedDataset(str(prefix) + "_lossmask") if mask.exists() else None
        self.n = len(self.data)
        self.order = EpochOrder(self.n, seed)

    @classmethod
    def optional(cls, prefix: Path, seed: int, pad_id: int) -> PackedShards | None:
        return cls(prefix, seed, pad_id) if Path(str(prefix) + ".idx").exists() else None

    def batch(self, k: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.order(j) for j in range(k * batch_size, (k + 1) * batch_size)]
        ids = torch.stack([torch.from_numpy(self.data[r].astype(np.int64)) for r in rows])
        mask = None
        if self.mask is not None:
            mask = torch.stack([torch.from_numpy(self.mask[r].astype(np.bool_)) for r in rows])
        return ids, labels_for(ids, mask, self.pad_id)


class RowBatches:
    """Tokenized rows ({"input_ids", "labels"} of any length up to `length`), right-padded: under
    causal attention the padding after a row changes nothing before it."""

    def __init__(self, rows, length: int, pad_id: int, seed: int):
        self.rows, self.length, self.pad_id = rows, length, pad_id
        self.n = len(rows)
        self.order = EpochOrder(self.n, seed)

    def batch(self, k: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((batch_size, self.length), self.pad_id, dtype=torch.long)
        labels = torch.full((batch_size, self.length), -100, dtype=torch.long)
        for r, j in enumerate(range(k * batch_size, (k + 1) * batch_size)):
            row = self.rows[self.order(j)]
            ids[r, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
            labels[r, :len(row["labels"])] = torch.tensor(row["labels"])
        return ids, labels


def rank_batch(batches, step: int, micro: int, grad_accum: int, rank: int, dp: int, batch_size: int):
    """The micro-batch of one data-parallel rank. Global micro-batch index (step*accum+micro)*dp
    + rank, so dp=1 reads exactly the batches of the single-process loop and a DP run reads
    dp of them per micro-step, none twice."""
    return batches.batch((step * grad_accum + micro) * dp + rank, batch_size)
