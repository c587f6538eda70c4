"""Concatenating Megatron indexed datasets (.bin/.idx) in bounded memory.

megatron-core's `IndexedDatasetBuilder.add_index` gathers every part's sequence lengths and
document ends into Python lists and writes the index at the end: about 140 bytes of memory per
sequence, so 1M trajectories (842k packed sequences) cost ~120 MB and 10M over a gigabyte in
the one process that publishes. Here every array of the index is written part by part, a chunk
at a time, from memory-mapped inputs; the output is byte-identical to the builder's.

The .idx layout (megatron.core.datasets.indexed_dataset, version 1, not multimodal):
    b"MMIDIDX\\x00\\x00" | <Q version=1 | <B dtype code | <Q sequence count | <Q document count
    | int32 lengths[sequences] | int64 byte pointers[sequences] | int64 document ends[documents]
Document ends start with 0; each later entry is the index of the sequence after a document.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK = 1 << 20  # entries per write: 8 MiB of int64
# The format's constants, here so that writing shards imports neither megatron-core nor torch
# (tests/test_prepare_engine.py checks them against megatron-core's and lwm.train.data's).
HEADER = b"MMIDIDX\x00\x00"
_PREFIX = len(HEADER) + 8 + 1 + 8 + 8  # header, version, dtype code, the two counts
CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
         np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7,
         np.dtype(np.uint16): 8}  # megatron.core.datasets.indexed_dataset.DType


@dataclass
class IndexPart:
    prefix: Path
    code: int
    sequences: int
    documents: int

    @classmethod
    def read(cls, prefix: Path) -> "IndexPart":
        from lwm.train.data import index_header  # torch: only when publishing
        return cls(Path(prefix), *index_header(Path(f"{prefix}.idx")))

    def array(self, which: str) -> np.ndarray:
        """One of the index's arrays, memory-mapped: 'lengths' or 'documents' (the byte pointers
        between them are recomputed from the lengths, as Megatron's builder does)."""
        offset, dtype, count = {
            "lengths": (_PREFIX, np.int32, self.sequences),
            "documents": (_PREFIX + 12 * self.sequences, np.int64, self.documents)}[which]
        if count == 0:
            return np.zeros(0, dtype)
        return np.memmap(f"{self.prefix}.idx", dtype=dtype, mode="r", offset=offset, shape=(count,))


def concat(parts: list[str | Path], out_prefix: str | Path, dtype) -> dict:
    """Write `out_prefix`.bin/.idx as the concatenation of the indexed datasets at `parts`
    (prefixes, in order), each holding tokens of `dtype`. Returns the totals."""
    dtype = np.dtype(dtype)
    code = CODES[dtype]
    index = [IndexPart.read(Path(p)) for p in parts]
    tokens = 0
    for part in index:
        if part.code != code:
            raise ValueError(f"{part.prefix}.idx: dtype code {part.code}, expected {code} ({dtype})")
        if part.documents < 1:
            raise ValueError(f"{part.prefix}.idx: no document-start entry")
        n = _sum(part.array("lengths"))
        size = Path(f"{part.prefix}.bin").stat().st_size
        if size != n * dtype.itemsize:
            raise ValueError(f"{part.prefix}.bin: {size} bytes, but its index counts {n} tokens "
                             f"of {dtype.itemsize} bytes")
        tokens += n
    sequences = sum(p.sequences for p in index)
    documents = 1 + sum(p.documents - 1 for p in index)
    out_prefix = Path(out_prefix)
    with open(f"{out_prefix}.bin", "wb") as out:
        for part in index:
            with open(f"{part.prefix}.bin", "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    with open(f"{out_prefix}.idx", "wb") as out:
        out.write(HEADER + struct.pack("<QBQQ", 1, code, sequences, documents))
        for part in index:
            for chunk in _chunks(part.array("lengths")):
                out.write(chunk.tobytes())
        byte = 0  # where the next sequence starts in the concatenated .bin
        for part in index:
            for chunk in _chunks(part.array("lengths")):
                ends = byte + np.cumsum(chunk, dtype=np.int64) * dtype.itemsize
                out.write((ends - chunk.astype(np.int64) * dtype.itemsize).tobytes())
                byte = int(ends[-1])
        out.write(np.zeros(1, np.int64).tobytes())
        offset = 0  # sequences before this part
        for part in index:
            for chunk in _chunks(part.array("documents")[1:]):
                out.write((chunk + offset).tobytes())
            offset += part.sequences
    return {"sequences": sequences, "documents": documents - 1, "tokens": tokens}


def write_index(path: Path, dtype, sequences: int, seq_len: int) -> None:
    """The .idx of `sequences` sequences of `seq_len` tokens of `dtype`, each its own document:
    what IndexedDatasetBuilder writes after add_document(sequence, [seq_len]) per sequence."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as out:
        out.write(HEADER + struct.pack("<QBQQ", 1, CODES[dtype], sequences, sequences + 1))
        for start in range(0, sequences, CHUNK):
            out.write(np.full(min(CHUNK, sequences - start), seq_len, np.int32).tobytes())
        for start in range(0, sequences, CHUNK):
            seqs = np.arange(start, min(start + CHUNK, sequences), dtype=np.int64)
            out.write((seqs * seq_len * dtype.itemsize).tobytes())
        for start in range(0, sequences + 1, CHUNK):
            out.write(np.arange(start, min(start + CHUNK, sequences + 1), dtype=np.int64).tobytes())


def _chunks(a: np.ndarray):
    for start in range(0, len(a), CHUNK):
        yield np.asarray(a[start:start + CHUNK])


def _sum(a: np.ndarray) -> int:
    return int(sum(int(c.sum(dtype=np.int64)) for c in _chunks(a)))
