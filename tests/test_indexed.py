"""Concatenating Megatron indexed datasets in chunks equals megatron-core's own builder."""

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from data_pipeline import indexed


def _part(prefix, docs, dtype):
    """An indexed dataset written by megatron-core: `docs` is a list of documents, each a list
    of sequence lengths."""
    rng = np.random.default_rng(len(str(prefix)))
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        for n in doc:
            builder.add_item(torch.from_numpy(rng.integers(0, 100, n).astype(dtype)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
def test_chunked_concat_is_byte_identical_to_megatrons_builder(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(indexed, "CHUNK", 3)  # several chunks per part
    parts = [_part(tmp_path / "a", [[5, 7], [1], [4, 4, 4, 9]], dtype),
             _part(tmp_path / "empty", [], dtype),
             _part(tmp_path / "b", [[2], [8, 3, 6, 1, 1]], dtype),
             _part(tmp_path / "c", [[11]], dtype)]
    ref = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
    for p in parts:
        ref.add_index(p)
    ref.finalize(str(tmp_path / "ref.idx"))

    totals = indexed.concat(parts, tmp_path / "out", dtype)
    assert totals == {"sequences": 14, "documents": 6, "tokens": 66}
    for ext in ("bin", "idx"):
        assert (tmp_path / f"out.{ext}").read_bytes() == (tmp_path / f"ref.{ext}").read_bytes()
    merged = IndexedDataset(str(tmp_path / "out"))
    # (an empty .bin cannot be mapped; a dataset's arrays live only as long as its map)
    sources = [IndexedDataset(p) for p in parts if "empty" not in p]
    expected = [s for d in sources for s in d]
    assert len(merged) == len(expected) == 14
    assert all(np.array_equal(m, e) for m, e in zip(merged, expected))
    assert list(merged.document_indices) == [0, 2, 3, 7, 8, 13, 14]


def test_no_parts_writes_an_empty_dataset_like_the_builder(tmp_path):
    IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.int32).finalize(str(tmp_path / "ref.idx"))
    indexed.concat([], tmp_path / "out", np.int32)
    assert (tmp_path / "out.idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()


def test_bad_parts_are_named(tmp_path):
    good = _part(tmp_path / "good", [[3, 4]], np.int32)
    short = _part(tmp_path / "short", [[3, 4]], np.int32)
    with open(f"{short}.bin", "r+b") as f:
        f.truncate(12)
    with pytest.raises(ValueError, match=r"short\.bin: 12 bytes, but its index counts 7 tokens"):
        indexed.concat([good, short], tmp_path / "out", np.int32)
    with pytest.raises(ValueError, match=r"good\.idx: dtype code 4, expected 1"):
        indexed.concat([good], tmp_path / "out", np.uint8)
    (tmp_path / "junk.idx").write_bytes(b"not an index at all, just some bytes")
    with pytest.raises(ValueError, match=r"junk\.idx: not a Megatron indexed-dataset index"):
        indexed.concat([str(tmp_path / "junk")], tmp_path / "out", np.int32)
