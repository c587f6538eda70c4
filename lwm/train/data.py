"""Batches for the training loop: (input ids, labels) pairs where batch k depends only on
(seed, k), so a resumed run, or a run on another number of data-parallel ranks, reads exactly
the rows an uninterrupted single-process run reads.

- PackedShards: fixed-length packed sequences from Megatron .bin/.idx (CPT), with the loss mask
  prepare wrote beside them (<prefix>_lossmask) when there is one; the files are checked at open
  against each other and against prepare's manifest (a truncated file is an error naming it);
- RowBatches: tokenized rows of unequal length (SFT samples), one per row, right-padded.

Both visit their rows in one random order per epoch, computed once per epoch and cached. The loop
assembles batches ahead of the step on a background thread (Prefetch).
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from pathlib import Path

import numpy as np
import torch

INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset, version 1
INDEX_PREFIX = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # header, version, dtype code, the two counts
RERUN = "rerun `lwm prepare` (it prepares again when its outputs are damaged)"


class EpochOrder:
    """Row j of the endless stream is row perm(seed + epoch)[j mod n]: one permutation per epoch,
    kept until the stream moves to another epoch. The cache is one (epoch, permutation) pair,
    replaced whole, so two threads reading one stream never pair an epoch with another's order."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise ValueError("no rows to train on")
        self.n, self.seed, self._cached = n, seed, (None, None)

    def __call__(self, j: int) -> int:
        epoch, i = divmod(j, self.n)
        cached = self._cached
        if cached[0] != epoch:
            cached = self._cached = (epoch, np.random.default_rng(self.seed + epoch).permutation(self.n))
        return int(cached[1][i])


def labels_for(ids: torch.Tensor, mask: torch.Tensor | None, pad_id: int) -> torch.Tensor:
    """Full-LM labels: every token but padding and the tokens prepare's loss mask leaves out."""
    labels = ids.clone()
    labels[ids == pad_id] = -100
    if mask is not None:
        labels[~mask] = -100
    return labels


def index_header(idx: Path) -> tuple[int, int, int]:
    """(dtype code, sequence count, document count) of a Megatron .idx whose size agrees with
    them; a ValueError naming the file otherwise."""
    with open(idx, "rb") as f:
        head = f.read(INDEX_PREFIX)
    if len(head) < INDEX_PREFIX or head[:len(INDEX_HEADER)] != INDEX_HEADER:
        raise ValueError(f"{idx}: not a Megatron indexed-dataset index (header)")
    version, code, sequences, documents = struct.unpack("<QBQQ", head[len(INDEX_HEADER):])
    if version != 1:
        raise ValueError(f"{idx}: index version {version}, only version 1 is supported")
    expected = INDEX_PREFIX + 4 * sequences + 8 * sequences + 8 * documents
    if idx.stat().st_size != expected:
        raise ValueError(f"{idx}: {idx.stat().st_size} bytes, expected {expected} for "
                         f"{sequences} sequences and {documents} documents (multimodal or truncated)")
    return code, sequences, documents


def checked_index(prefix: Path) -> np.ndarray:
    """The sequence lengths of the indexed dataset at `prefix` after checking that its .idx is
    whole and its .bin holds exactly the tokens the index counts (a .bin missing its last
    sequence is as wrong as a truncated one)."""
    from megatron.core.datasets.indexed_dataset import DType
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for path in (idx, bin_):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
    code, sequences, _ = index_header(idx)
    try:
        itemsize = DType.size(code)
    except ValueError:
        raise ValueError(f"{idx}: unknown dtype code {code}") from None
    lengths = np.fromfile(idx, dtype=np.int32, count=sequences, offset=INDEX_PREFIX)
    tokens = int(lengths.sum(dtype=np.int64))
    if bin_.stat().st_size != tokens * itemsize:
        raise ValueError(f"{bin_}: {bin_.stat().st_size} bytes, but {idx.name} counts {tokens} "
                         f"tokens of {itemsize} bytes in {sequences} sequences")
    return lengths


class ShardRows:
    """The sequences of one indexed dataset: the .idx memory-mapped (megatron-core's reader), each
    sequence read from the .bin with one pread. Not through a memory map of the .bin: a page
    fault there waits for the disk holding the GIL, so the prefetch thread's cold reads stall the
    training thread too, and every 4 KiB page faults on its own; pread releases the GIL and reads
    a sequence in one request (bench/bench_datapath.py measures both)."""

    def __init__(self, prefix: Path):
        from megatron.core.datasets.indexed_dataset import IndexedDataset
        self.index = IndexedDataset(str(prefix), mmap=False).index
        self.path = Path(f"{prefix}.bin")
        self._file = open(self.path, "rb", buffering=0)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, r: int) -> np.ndarray:
        pointer, length, _ = self.index[r]
        row = np.empty(int(length), self.index.dtype)
        got = os.preadv(self._file.fileno(), [row], int(pointer))
        if got != row.nbytes:
            raise OSError(f"{self.path}: read {got} of the {row.nbytes} bytes of sequence {r}; {RERUN}")
        return row


class PackedShards:
    def __init__(self, prefix: Path, seed: int, pad_id: int):
        if not Path(str(prefix) + ".idx").exists():
            raise FileNotFoundError(f"CPT shards {prefix}.bin/.idx not found: run `lwm prepare` first")
        try:
            lengths = checked_index(prefix)
            mask = self._check_mask(Path(f"{prefix}_lossmask"), lengths)
            self._check_manifest(Path(prefix), lengths)
        except (OSError, ValueError) as e:
            raise type(e)(f"CPT shards: {e}; {RERUN}") from None
        self.data, self.pad_id = ShardRows(prefix), pad_id
        self.mask = ShardRows(mask) if mask else None
        self.n = len(self.data)
        self.order = EpochOrder(self.n, seed)

    @staticmethod
    def _check_mask(prefix: Path, lengths: np.ndarray) -> Path | None:
        """The loss mask beside the shards, whole and aligned sequence for sequence, or None when
        prepare wrote none (half a pair is an error, not a run without the mask)."""
        present = [p for p in (Path(f"{prefix}.idx"), Path(f"{prefix}.bin")) if p.exists()]
        if not present:
            return None
        mask_lengths = checked_index(prefix)
        if not np.array_equal(mask_lengths, lengths):
            raise ValueError(f"{prefix}.idx: {len(mask_lengths)} sequences of other lengths than "
                             f"the {len(lengths)} of the token ids beside it")
        return prefix

    @staticmethod
    def _check_manifest(prefix: Path, lengths: np.ndarray) -> None:
        """The counts prepare recorded in its manifest (<prepare>/manifest.json), when there is one."""
        manifest = prefix.parent.parent / "manifest.json"
        if not manifest.is_file():
            return
        cpt = json.loads(manifest.read_text()).get("cpt", {})
        want = cpt.get(prefix.name, {"sequences": 0, "tokens": 0})
        have = {"sequences": len(lengths), "tokens": int(lengths.sum(dtype=np.int64))}
        if {k: want.get(k) for k in have} != have:
            raise ValueError(f"{prefix}.idx: {have['sequences']} sequences of {have['tokens']} tokens, "
                             f"but {manifest} records {want.get('sequences')} of {want.get('tokens')}")

    @classmethod
    def optional(cls, prefix: Path, seed: int, pad_id: int) -> PackedShards | None:
        """The shards at `prefix`, or None when prepare wrote none there (or none with a sequence)."""
        idx = Path(str(prefix) + ".idx")
        if not idx.exists():
            return None
        try:
            if index_header(idx)[1] == 0:
                return None
        except ValueError:
            pass  # the constructor says so, with the way out
        return cls(prefix, seed, pad_id)

    def batch(self, k: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.order(j) for j in range(k * batch_size, (k + 1) * batch_size)]
        ids = torch.from_numpy(np.stack([self.data[r] for r in rows]).astype(np.int64))
        mask = None
        if self.mask is not None:
            mask = torch.from_numpy(np.stack([self.mask[r] for r in rows]).astype(np.bool_))
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


class Prefetch:
    """The items fn(key) for the keys in order, assembled on a background thread up to `depth`
    ahead of the consumer, so reading rows, an epoch's new permutation and a slow file system
    overlap the training step instead of adding to it. The order is the keys': item k is fn(k)
    whatever the timing, so a resumed run and every data-parallel rank read what they read
    without it. An exception in fn is raised by next() in the consumer, after the items before
    it; close() (or leaving the with block) stops the thread.

    The loop's keys are steps and fn a step's micro-batches. At the GPU check's size (a step of
    ~0.2 s) 8 steps, 1.7 s, cover a 10M-sequence epoch's permutation (0.5-1.5 s on two busy
    cores, bench/bench_datapath.py), for the memory of 8 steps' batches."""

    def __init__(self, fn, keys, depth: int = 8):
        self._fn, self._keys = fn, iter(keys)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="lwm-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for key in self._keys:
                if not self._put((True, self._fn(key))):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put((False, err))
            return
        self._put((False, StopIteration()))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        ok, item = self._queue.get()
        if not ok:
            self._stop.set()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()  # a put waiting on a full queue gives up within its 0.1 s timeout
        self._thread.join()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
