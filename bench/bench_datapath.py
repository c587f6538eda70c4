"""The CPT data path against the training step at 1M and 10M packed sequences.

    python bench/bench_datapath.py                  # 1M and 10M sequences of 4096 tokens, ~2 min
    python bench/bench_datapath.py --sequences 100000 --out /tmp/datapath.json

The step is the GPU check's (bench/gpu_check.py throughput rows): the mid-size Qwen3-style MoE of
bench/bench_backends.MID at seq 4096 x micro-batch 2 (cpt.batch_size), cpt.grad_accum 1. There is
no GPU here, so its time is derived, per GPU:

    step s = 6 x active parameters x tokens per step / (MFU x 790e12 FLOP/s, the H200's bf16 rate)

at the README's MFU goals, 35% (Megatron) and 20% (hf). Attention FLOP are left out (the GPU
check's MFU counts them): a shorter step, so a larger share for the data path.

Synthetic shards in prepare's layout (lwm.train.data.PackedShards reads them as it reads
prepare's): <prefix>.bin/.idx of int32 token ids and <prefix>_lossmask.bin/.idx of uint8, one
document per packed sequence. The cost of opening them and of the per-epoch permutation grows
with the number of sequences; a batch's read cost with its bytes. So the index is whole (every
one of the 1M or 10M sequences, 4096 tokens each), and the .bin files are sparse: only the rows
the timed batches read hold tokens (random, written here), the rest is a hole that takes no disk
(10M x 4096 x 5 bytes would be 205 GB). After writing, every file is dropped from the page cache
(posix_fadvise DONTNEED), so opening reads the index from disk and each batch reads its rows from
disk, cold (a VM's disk may still be cached on its host).

Per size it measures: opening (PackedShards: the checks and the index's memory maps), the first
batch (the epoch's permutation and the first reads), assembling a step's batches directly as the
loop did (mean and p99 over --batches steps), and with lwm.train.data.Prefetch, while the
training thread spends the derived step time in Python (holding the GIL: the worst case for the
thread that assembles): how long it waits for each step's batches, also across an epoch
boundary, where the next epoch's permutation is drawn, and the user CPU time of the assembling
thread per step, a bound on what that thread takes from the training thread through the GIL (its
reads wait for the disk, and run in the kernel, without the GIL: PackedShards reads with pread,
not through a memory map). The synthetic shards are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEQ, BATCH, ACCUM = 4096, 2, 1   # bench/gpu_check.py: --seq 4096 --batch 2; cpt.grad_accum 1
VOCAB = 151936
GOALS = {"megatron": 0.35, "hf": 0.20}
SEED = 1234


def step_seconds(tokens: int, mfu: float) -> tuple[float, dict]:
    import bench_backends as bb
    from lwm.config import ModelConfig
    active = bb.active_params(ModelConfig(**bb.MID), VOCAB)
    flop = 6 * active * tokens
    return flop / (mfu * bb.PEAK_BF16), {"active_params": active, "flop_per_step": flop, "peak_flops": bb.PEAK_BF16}


def write_index(path: Path, code: int, lengths: np.ndarray, itemsize: int) -> None:
    """A Megatron .idx, byte for byte what IndexedDatasetBuilder.finalize writes for one document
    per sequence (what prepare's ShardPacker adds), without its per-sequence Python loop."""
    from lwm.train.data import INDEX_HEADER
    n = len(lengths)
    pointers = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(INDEX_HEADER + struct.pack("<QBQQ", 1, code, n, n + 1))
        f.write(lengths.astype(np.int32).tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(n + 1, dtype=np.int64).tobytes())


def write_shards(prefix: Path, n: int, seq: int, rows: np.ndarray) -> None:
    """Sparse shards of n sequences of `seq` tokens; `rows` hold random tokens and mask bits."""
    from megatron.core.datasets.indexed_dataset import DType
    rng = np.random.default_rng(0)
    lengths = np.full(n, seq, np.int32)
    for suffix, dtype in (("", np.int32), ("_lossmask", np.uint8)):
        itemsize = np.dtype(dtype).itemsize
        write_index(Path(f"{prefix}{suffix}.idx"), DType.code_from_dtype(dtype), lengths, itemsize)
        with open(f"{prefix}{suffix}.bin", "wb") as f:
            f.truncate(n * seq * itemsize)
            for r in np.sort(rows):
                row = rng.integers(1, VOCAB, seq, dtype=np.int32) if dtype is np.int32 else \
                    rng.integers(0, 2, seq, dtype=np.uint8)
                f.seek(int(r) * seq * itemsize)
                f.write(row.tobytes())
    for path in prefix.parent.iterdir():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def check_writer(root: Path) -> None:
    """write_index writes what megatron-core's IndexedDatasetBuilder writes for prepare's shards."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    seq, n = 8, 5
    for dtype in (np.int32, np.uint8):
        b = IndexedDatasetBuilder(str(root / "ref.bin"), dtype=dtype)
        for _ in range(n):
            b.add_document(np.ones(seq, dtype), [seq])
        b.finalize(str(root / "ref.idx"))
        write_index(root / "ours.idx", DType.code_from_dtype(dtype), np.full(n, seq, np.int32),
                    np.dtype(dtype).itemsize)
        assert (root / "ref.idx").read_bytes() == (root / "ours.idx").read_bytes(), dtype
    for name in ("ref.bin", "ref.idx", "ours.idx"):
        (root / name).unlink()


def rows_of(steps, n: int, perms: dict) -> list[int]:
    """The rows a single-process run reads in these steps (rank_batch with dp=1)."""
    per = BATCH * ACCUM
    return [int(perms[j // n][j % n]) for s in steps for j in range(s * per, (s + 1) * per)]


def spin(seconds: float) -> None:
    """The training step: `seconds` spent in Python holding the GIL, the worst case for the
    thread that assembles the batches (a real step also waits on the GPU without it)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def prefetched(prefix: Path, steps: range, step_s: float, depth: int) -> tuple[list[float], dict]:
    """With Prefetch (a fresh reader, as a started or resumed run has): the seconds the training
    thread waits for each step's batches, and the user and system CPU seconds per step of the
    thread that assembles them. Its user time bounds what it takes from the training thread
    through the GIL; its system time is the kernel's part of the reads, which pread does without
    the GIL."""
    import resource

    from lwm.train.data import PackedShards, Prefetch, rank_batch
    shards, usage = PackedShards(prefix, SEED, 0), []

    def step_batches(s):
        micro = [rank_batch(shards, s, k, ACCUM, 0, 1, BATCH) for k in range(ACCUM)]
        usage.append(resource.getrusage(resource.RUSAGE_THREAD))
        return micro

    waits = []
    with Prefetch(step_batches, steps, depth) as upcoming:
        for _ in steps:
            t = time.perf_counter()
            next(upcoming)
            waits.append(time.perf_counter() - t)
            spin(step_s)
    # from the end of the first step's batches, which include the epoch's permutation
    first, last, n = usage[0], usage[-1], len(usage) - 1
    return waits, {"user": (last.ru_utime - first.ru_utime) / n, "system": (last.ru_stime - first.ru_stime) / n}


def measure(root: Path, n: int, seq: int, batches: int, steps: int, depth: int, step_s: float) -> dict:
    from lwm.train.data import PackedShards, rank_batch
    per = BATCH * ACCUM
    boundary = n // per  # the first step that reads epoch 1
    direct = range(0, batches)
    ahead = range(direct.stop, direct.stop + steps)
    crossing = range(boundary - depth - 4, boundary + 4)
    assert ahead.stop <= crossing.start, "--sequences too small for --batches and --steps"
    t = time.perf_counter()
    perms = {0: np.random.default_rng(SEED).permutation(n)}
    perm_s = time.perf_counter() - t
    perms[1] = np.random.default_rng(SEED + 1).permutation(n)
    t = time.perf_counter()
    prefix = root / "cpt" / "train"  # where prepare puts them (a manifest two folders up is read)
    prefix.parent.mkdir()
    write_shards(prefix, n, seq, np.array(rows_of([*direct, *ahead, *crossing], n, perms)))
    write_s = time.perf_counter() - t
    del perms

    t = time.perf_counter()
    shards = PackedShards(prefix, SEED, 0)
    open_s = time.perf_counter() - t
    times = []
    for s in direct:
        t = time.perf_counter()
        micro = [rank_batch(shards, s, k, ACCUM, 0, 1, BATCH) for k in range(ACCUM)]
        times.append(time.perf_counter() - t)
        assert all(int(ids.min()) > 0 for ids, _ in micro), "read a row the benchmark did not write"
    del shards
    assemble = np.array(times[1:])
    # the first step of each includes the epoch's permutation: the start-up, reported apart
    steady, cpu = prefetched(prefix, ahead, step_s, depth)
    edge, _ = prefetched(prefix, crossing, step_s, depth)
    ms = lambda x: round(1e3 * float(x), 3)  # noqa: E731
    return {"sequences": n, "seq": seq, "write_s": round(write_s, 1), "open_ms": ms(open_s),
            "permutation_ms": ms(perm_s), "first_batch_ms": ms(times[0]),
            "assembly_ms_mean": ms(assemble.mean()), "assembly_ms_p99": ms(np.percentile(assemble, 99)),
            "assembly_ms_max": ms(assemble.max()), "prefetch_first_wait_ms": ms(steady[0]),
            "prefetch_wait_ms_mean": ms(np.mean(steady[1:])), "prefetch_wait_ms_max": ms(np.max(steady[1:])),
            "prefetch_thread_user_ms": ms(cpu["user"]), "prefetch_thread_system_ms": ms(cpu["system"]),
            "epoch_boundary_wait_ms_max": ms(np.max(edge[1:])),
            "epoch_boundary_step": boundary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--seq", type=int, default=SEQ, help="tokens per packed sequence")
    ap.add_argument("--batches", type=int, default=500, help="steps assembled directly (timed)")
    ap.add_argument("--steps", type=int, default=64, help="steps taken with Prefetch, per measurement")
    ap.add_argument("--depth", type=int, default=8, help="Prefetch depth, in steps (the loop's default)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthetic shards go (deleted)")
    ap.add_argument("--out", default="bench_datapath.json")
    a = ap.parse_args()
    tokens = BATCH * ACCUM * a.seq
    step = {goal: step_seconds(tokens, mfu) for goal, mfu in GOALS.items()}
    inputs = {**step["megatron"][1], "model": "bench/bench_backends.MID (bench/gpu_check.py throughput rows)",
              "micro_batch": BATCH, "grad_accum": ACCUM, "seq": a.seq, "tokens_per_step": tokens,
              "mfu_goals": GOALS, "step_ms": {g: round(1e3 * s, 1) for g, (s, _) in step.items()},
              "formula": "step s = 6 x active params x tokens per step / (MFU x peak FLOP/s)"}
    print(f"step = 6 x {inputs['active_params']:,} active params x {tokens:,} tokens "
          f"({BATCH} x {ACCUM} x {a.seq}) / (MFU x {inputs['peak_flops']:.3g} FLOP/s) = "
          + ", ".join(f"{inputs['step_ms'][g]} ms at {m:.0%} ({g})" for g, m in GOALS.items()))
    results = []
    for n in a.sequences:
        with tempfile.TemporaryDirectory(dir=a.dir, prefix="bench_datapath_") as tmp:
            check_writer(Path(tmp))
            r = measure(Path(tmp), n, a.seq, a.batches, a.steps, a.depth, step["megatron"][0])
        results.append(r)
        print(f"{n:,} sequences: shards written in {r['write_s']} s; open {r['open_ms']} ms; permutation "
              f"{r['permutation_ms']} ms; first batch {r['first_batch_ms']} ms; with prefetch: first wait "
              f"{r['prefetch_first_wait_ms']} ms, longest wait across the epoch boundary (step "
              f"{r['epoch_boundary_step']:,}) {r['epoch_boundary_wait_ms_max']} ms")
    print(f"\n{'':>17} {'direct':>17}  {'with prefetch':>26}\n"
          f"{'sequences':>11} {'seq':>5} {'assembly ms/step':>17} {'wait ms/step':>15} {'its user':>8} "
          f"{'step ms':>8} {'MFU':>4} {'share, direct':>14} {'share, prefetch':>16}\n"
          f"{'':>17} {'mean (p99)':>17} {'mean (max)':>15} {'CPU ms':>8}")
    for r in results:
        for goal in GOALS:
            step_ms = inputs["step_ms"][goal]
            held = r["prefetch_wait_ms_mean"] + r["prefetch_thread_user_ms"]
            r[f"share_direct_{goal}_pct"] = round(100 * r["assembly_ms_mean"] / step_ms, 4)
            r[f"share_prefetch_{goal}_pct"] = round(100 * held / step_ms, 4)
            print(f"{r['sequences']:>11,} {r['seq']:>5} {r['assembly_ms_mean']:>8.3f} ({r['assembly_ms_p99']:>6.2f}) "
                  f"{r['prefetch_wait_ms_mean']:>6.3f} ({r['prefetch_wait_ms_max']:>6.2f}) "
                  f"{r['prefetch_thread_user_ms']:>8.3f} {step_ms:>8.1f} {GOALS[goal]:>4.0%} "
                  f"{r[f'share_direct_{goal}_pct']:>13.2f}% {r[f'share_prefetch_{goal}_pct']:>15.3f}%")
    print("share, prefetch = (wait + the assembling thread's user CPU) / step: its user CPU bounds what it "
          "takes from the training thread through the GIL")
    Path(a.out).write_text(json.dumps({"inputs": inputs, "results": results}, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
