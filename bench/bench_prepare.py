"""Throughput and memory of `lwm prepare` on a large synthetic-but-realistic corpus.

    python bench/bench_prepare.py --trajectories 1000000 --seed-file runs/default/collect/trajectories.jsonl

The corpus is made from real collected trajectories (the seed file) by re-drawing their words
and numbers, so records keep real shapes, lengths and formats while differing like real data
does. Reported, on this machine:
  - full prepare: trajectories/s, tokens/s per core, peak RSS (of any one process of the tree,
    sampled, and of the tree's sum);
  - the ceiling: the tokenizer alone on the same rendered text (tokens/s per core);
  - a baseline: plain `datasets.map` tokenisation of the same text (tokens/s per core).
Each also per CPU second (the CPU time of prepare's whole process tree, sampled; of this process
for the ceiling and baseline): on a machine others share, wall-clock rates move with their load,
rates per CPU second much less, so `prepare / ceiling` is also given per CPU second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # per-core numbers: one thread per process
_TOKEN = re.compile(r"[A-Za-z]{3,}|\d+")


def make_corpus(seed_file: Path, out: Path, n: int, shards: int) -> int:
    """n trajectories in `shards` JSONL files, each a real seed record with fresh words/numbers."""
    seeds = [json.loads(l) for l in seed_file.read_text().splitlines() if l.strip()]
    vocab = sorted({w for s in seeds for w in _TOKEN.findall(json.dumps(s)) if w.isalpha()})
    out.mkdir(parents=True, exist_ok=True)
    files = [open(out / f"part-{i:04d}.jsonl", "w", encoding="utf-8") for i in range(shards)]
    size = 0
    for i in range(n):
        rng = random.Random(i)
        rec = seeds[i % len(seeds)]
        swap: dict[str, str] = {}  # half of a record's words are re-drawn, consistently

        def word(w: str) -> str:
            if w not in swap:
                swap[w] = rng.choice(vocab) if rng.random() < 0.5 else w
            return swap[w]

        def redraw(text: str) -> str:
            return _TOKEN.sub(lambda m: str(rng.randint(0, 10 ** len(m.group())))
                              if m.group().isdigit() else word(m.group()), text)
        new = {**rec, "id": f"bench-{i:08d}", "task": redraw(rec["task"]),
               "initial_observation": redraw(rec["initial_observation"]),
               "steps": [{"action": s["action"], "observation": redraw(s["observation"])}
                         for s in rec["steps"]]}
        line = json.dumps(new, ensure_ascii=False) + "\n"
        files[i % shards].write(line)
        size += len(line)
    for f in files:
        f.close()
    return size


def tokenizer_ceiling(tokenizer: str, texts: list[str]) -> tuple[float, float]:
    """Tokens per second of wall clock and of CPU time."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer)
    start, cpu = time.perf_counter(), time.process_time()
    n = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def datasets_map_baseline(tokenizer: str, texts: list[str]) -> float:
    import datasets
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer)
    ds = datasets.Dataset.from_dict({"text": texts})
    start, cpu = time.perf_counter(), time.process_time()
    out = ds.map(lambda b: tok(b["text"], add_special_tokens=False), batched=True,
                 remove_columns=["text"], load_from_cache_file=False)
    n = sum(len(ids) for ids in out["input_ids"])
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=1_000_000)
    ap.add_argument("--seed-file", type=Path, help="collected trajectories to draw the corpus from")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_prepare"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tasks", type=int, default=0, help="prepare.tasks (0: one per 64 MiB of input)")
    ap.add_argument("--sample", type=int, default=20000, help="texts for the tokenizer ceiling/baseline")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="skip corpus and prepare: measure the ceiling and baseline on --work's finished run")
    a = ap.parse_args()
    if not a.ceiling_only and a.seed_file is None:
        ap.error("--seed-file is required (unless --ceiling-only)")
    run = a.work / "run"
    per_cpu = run_prepare(a, run) if not a.ceiling_only else None
    _, ceiling_cpu = ceiling_and_baseline(run, a.sample)
    if per_cpu:
        print(f"prepare / tokenizer alone, per CPU second: {per_cpu / ceiling_cpu:.3f}")


def run_prepare(a, run: Path) -> float:
    """Runs prepare; returns its CPT tokens per CPU second."""
    corpus = a.work / "corpus"
    t = time.perf_counter()
    size = make_corpus(a.seed_file, corpus, a.trajectories, shards=max(a.workers * 4, 1))
    print(f"corpus: {a.trajectories} trajectories, {size / 2**20:.0f} MiB, made in {time.perf_counter() - t:.0f} s")

    parts = sorted(corpus.glob("*.jsonl"))
    cmd = [sys.executable, "-m", "launch.cli", "prepare", f"hydra.run.dir={run}", "wandb.mode=disabled",
           f"prepare.input={parts[0]}", f"data.trajectories=[{','.join(map(str, parts[1:]))}]",
           f"prepare.workers={a.workers}", f"prepare.tasks={a.tasks}"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_one, peak_tree, cpu = watch_rss(proc)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {' '.join(cmd)}")
    wall = time.perf_counter() - t
    # the kernel's count covers the processes that were waited for (not the pool's workers)
    peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, peak_one * 2**10)
    manifest = json.loads((run / "prepare" / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in manifest["cpt"].values())
    print(f"prepare: {wall:.0f} s, {a.trajectories / wall:.0f} trajectories/s, "
          f"{tokens / wall / a.workers:.0f} CPT tokens/s per core ({a.workers} workers), "
          f"peak RSS of one process {peak_kib / 2**10:.0f} MiB, of all its processes together "
          f"{peak_tree:.0f} MiB")
    print(f"prepare CPU: {cpu:.0f} s of all its processes ({cpu / wall:.2f} cores busy on average), "
          f"{tokens / cpu:.0f} CPT tokens per CPU second")
    print(f"packed CPT shards: real-token fraction {manifest['cpt']['train']['real_token_fraction']:.4f}")
    return tokens / cpu


def watch_rss(proc: subprocess.Popen, every: float = 0.5) -> tuple[float, float, float]:
    """Until proc exits: the largest RSS of any one process of its tree, and of the tree's sum,
    in MiB, sampled every `every` seconds (datatrove's pool workers included), and the CPU
    seconds (user + system, each process its own) of every process of the tree as last sampled
    (what a process spends in its last `every` seconds, or in a life shorter than that, is
    missed: seconds in all, against minutes of CPU)."""
    import psutil
    root, one, tree, cpu = psutil.Process(proc.pid), 0.0, 0.0, {}
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss
                t = p.cpu_times()
                cpu[(p.pid, p.create_time())] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
            one, total = max(one, rss / 2**20), total + rss
        tree = max(tree, total / 2**20)
        time.sleep(every)
    proc.wait()
    return one, tree, sum(cpu.values())


def ceiling_and_baseline(run: Path, sample: int) -> tuple[float, float]:
    """The tokenizer alone's tokens per second of wall clock and per CPU second."""
    from lwm import render
    from lwm.domains import get_domain
    from lwm.schema import Trajectory
    with open(run / "prepare" / "train.jsonl", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(sample), f)]
    texts = [render.cpt_document(get_domain(r.domain), r)
             for r in (Trajectory.from_dict(json.loads(l)) for l in lines)]
    tok_dir = str(run / "prepare" / "tokenizer")
    ceiling, ceiling_cpu = tokenizer_ceiling(tok_dir, texts)
    baseline, baseline_cpu = datasets_map_baseline(tok_dir, texts)
    print(f"tokenizer alone (ceiling): {ceiling:.0f} tokens/s per core, {ceiling_cpu:.0f} per CPU second")
    print(f"datasets.map baseline:     {baseline:.0f} tokens/s per core, {baseline_cpu:.0f} per CPU second")
    return ceiling, ceiling_cpu


if __name__ == "__main__":
    main()
