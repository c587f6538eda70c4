"""Steps/s of every domain's collector on its scripted tasks, through the real environments.

    python bench/bench_domains.py                    # every registered collector
    python bench/bench_domains.py --domains swe mcp --episodes 6

Per domain: scripted episodes run back to back in one environment; the report gives steps/s
over the whole wall time (environment resets included) and over step time alone. For the
terminal's aggregate throughput with zero-duration actions across workers, see
bench/bench_collect.py.
"""

from __future__ import annotations

import argparse
import json
import time

from data_pipeline.collect.base import collector_names, get_collector
from lwm.config import CollectConfig


def bench_domain(domain: str, episodes: int, seed: int = 0) -> dict:
    collector = get_collector(domain, CollectConfig())
    env = collector.environment()
    steps, step_s, start = 0, 0.0, time.monotonic()
    try:
        for i in range(episodes):
            task = collector.task(i, seed)
            observation = env.reset(task)
            for action in task.actions:
                # Scripted steps may be functions of what is on screen (web element ids).
                action = action(observation) if callable(action) else action
                t = time.monotonic()
                observation = env.step(action)
                step_s += time.monotonic() - t
                steps += 1
    finally:
        env.close()
        getattr(env, "shutdown", lambda: None)()
    wall = time.monotonic() - start
    return {"domain": domain, "episodes": episodes, "steps": steps, "wall_s": round(wall, 2),
            "steps_per_s": round(steps / wall, 2), "steps_per_s_excl_reset": round(steps / step_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", nargs="*", default=collector_names())
    ap.add_argument("--episodes", type=int, default=4)
    a = ap.parse_args()
    print(f"{'domain':<10} {'episodes':>8} {'steps':>6} {'steps/s':>9} {'steps/s excl. reset':>20}")
    for domain in a.domains:
        r = bench_domain(domain, a.episodes)
        print(f"{domain:<10} {r['episodes']:>8} {r['steps']:>6} {r['steps_per_s']:>9} "
              f"{r['steps_per_s_excl_reset']:>20}")
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
