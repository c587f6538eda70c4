"""Peak memory of publishing CPT shards: concatenating the render tasks' indexed datasets.

    python bench/bench_indexed.py                # 1M and 10M trajectories' worth of sequences

A 1M-trajectory prepare packs 842k sequences of 1024 tokens in 44 render tasks (one per 64 MiB
of input); 10M makes ten times both. The parts here have those counts of sequences and
documents, one token each: memory depends on how many sequences the index holds, not on how
long they are (the .bin is streamed by both). For each size it prints the peak RSS above the
resident size of a process that has imported the libraries, for megatron-core's IndexedDatasetBuilder.add_index
and for data_pipeline.indexed.concat (what prepare's publish step uses).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEQUENCES_PER_PART = 842_000 // 44
SEQUENCES_PER_DOCUMENT = 2  # a packed sequence holds parts of a trajectory or two


def make_parts(root: Path, parts: int) -> list[str]:
    from megatron.core.datasets.indexed_dataset import _IndexWriter
    prefixes = []
    n = SEQUENCES_PER_PART
    for i in range(parts):
        prefix = root / f"part{i:04d}"
        np.ones(n, np.int32).tofile(f"{prefix}.bin")
        with _IndexWriter(f"{prefix}.idx", np.int32) as w:
            w.write([1] * n, None, list(range(0, n + 1, SEQUENCES_PER_DOCUMENT)))
        prefixes.append(str(prefix))
    return prefixes


CHILD = """
import gc, sys
import numpy as np
how, out, parts = sys.argv[1], sys.argv[2], sys.argv[3:]
if how == "megatron":
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
else:
    from data_pipeline import indexed
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
gc.collect()
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the resident size
    f.write("5")
base = status("VmRSS:")
if how == "megatron":
    b = IndexedDatasetBuilder(out + ".bin", dtype=np.int32)
    for p in parts:
        b.add_index(p)
    b.finalize(out + ".idx")
else:
    indexed.concat(parts, out, np.int32)
print((status("VmHWM:") - base) / 1024)
"""


def peak_mib(how: str, out: Path, parts: list[str]) -> float:
    res = subprocess.run([sys.executable, "-c", CHILD, how, str(out), *parts], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, nargs="+", default=[1_000_000, 10_000_000])
    a = ap.parse_args()
    for n in a.trajectories:
        parts = max(1, round(44 * n / 1_000_000))
        with tempfile.TemporaryDirectory() as tmp:
            prefixes = make_parts(Path(tmp), parts)
            sizes = {how: peak_mib(how, Path(tmp) / how, prefixes) for how in ("megatron", "concat")}
            same = all((Path(tmp) / f"megatron.{e}").read_bytes() == (Path(tmp) / f"concat.{e}").read_bytes()
                       for e in ("bin", "idx"))
        print(f"{n} trajectories ({parts} parts, {parts * SEQUENCES_PER_PART} sequences): peak RSS above "
              f"imports: IndexedDatasetBuilder {sizes['megatron']:.0f} MiB, indexed.concat "
              f"{sizes['concat']:.0f} MiB; outputs identical: {same}")


if __name__ == "__main__":
    main()
