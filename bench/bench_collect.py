"""Aggregate terminal steps/s with zero-duration actions, N workers each with its own sandbox.

    python bench/bench_collect.py --workers 8 --episodes 4 --steps 25

Each worker runs episodes of `steps` zero-duration `echo` actions in a fresh sandbox; the report
gives steps/s over the whole wall time (sandbox start-up included) and over step time alone.
The floor per step is collect.settle_s (the quiet time before a screen is captured).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

from data_pipeline.collect.terminal import TerminalEnv
from lwm.config import CollectConfig


def _worker(args: tuple[int, int, float]) -> tuple[int, float, float]:
    episodes, steps, settle_s = args
    env = TerminalEnv(CollectConfig(settle_s=settle_s))
    step_time = reset_time = 0.0
    for _ in range(episodes):
        t = time.monotonic()
        env.reset()
        reset_time += time.monotonic() - t
        t = time.monotonic()
        for i in range(steps):
            env.step(json.dumps([{"keystrokes": f"echo {i}\n", "duration": 0}]))
        step_time += time.monotonic() - t
        env.close()
    return episodes * steps, step_time, reset_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=4, help="episodes per worker")
    ap.add_argument("--steps", type=int, default=25, help="steps per episode")
    ap.add_argument("--settle-s", type=float, default=CollectConfig.settle_s)
    a = ap.parse_args()
    start = time.monotonic()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        results = pool.map(_worker, [(a.episodes, a.steps, a.settle_s)] * a.workers)
    wall = time.monotonic() - start
    steps = sum(r[0] for r in results)
    per_worker_step_s = sum(r[1] for r in results) / a.workers
    print(f"workers={a.workers} steps={steps} settle_s={a.settle_s} wall={wall:.2f}s")
    print(f"aggregate steps/s (wall, incl. process spawn and sandbox start): {steps / wall:.1f}")
    print(f"aggregate steps/s (step time only): {steps / per_worker_step_s:.1f}")
    print(f"mean sandbox+tmux start: {sum(r[2] for r in results) / (a.workers * a.episodes) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
