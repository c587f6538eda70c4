"""Parallel, resumable trajectory collection in every selected domain's real environment.

    summary = collect(cfg, out_dir)   # cfg: the composed LWMConfig (data.domains, collect, policy)

Writes out_dir/trajectories.jsonl (one Trajectory per line), out_dir/quarantine.jsonl (episodes
whose actions were malformed) and out_dir/metrics.json. Episode ids are deterministic in
(domain, policy, seed, index), so a rerun skips what is already written; a line cut short by a
kill is dropped first. A failing episode is logged and counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf
from tqdm import tqdm

from data_pipeline.collect.base import ActionError, Environment, collector_names, get_collector
from data_pipeline.collect.policies import Policy, ReplayRecordError, make_policy
from lwm.domains import register_extra, run_domains
from lwm.schema import Step, Trajectory, validate
from lwm.tracking import Tracker

log = logging.getLogger(__name__)


def episode_id(policy: str, seed: int, index: int, domain: str = "terminal") -> str:
    return f"{domain}-{policy}-s{seed}-{index:06d}"


def run_episode(cfg, policy: Policy, env: Environment, index: int) -> dict:
    """One episode in a fresh environment. Returns {"status": ok|failed|quarantined|empty, ...}."""
    domain = policy.collector.domain
    eid = episode_id(policy.name, cfg.seed, index, domain)
    result = {"index": index, "id": eid, "domain": domain, "steps": 0}
    start = time.monotonic()
    try:
        agent = policy.agent(index)
    except ReplayRecordError as e:
        return {**result, "status": "quarantined", "error": str(e)}
    steps: list[Step] = []
    try:
        observation = first = env.reset(agent.task)
        tools = list(env.tools)
        reset_s = time.monotonic() - start
        limit = agent.max_steps or cfg.collect.max_steps
        while len(steps) < limit:
            action = agent.act(observation, steps)
            if action is None:
                break
            observation = env.step(action)
            steps.append(Step(action, observation))
        agent.finish(steps)
    except ActionError as e:  # the policy's or the record's fault, not the environment's
        return {**result, "status": "quarantined", "error": str(e), "meta": agent.meta}
    except Exception as e:  # noqa: BLE001 - an environment or endpoint failure costs one episode
        return {**result, "status": "failed", "error": f"{type(e).__name__}: {e}"}
    finally:
        env.close()
    if not steps:
        return {**result, "status": "empty", "error": agent.meta.get("end_reason", "no steps")}
    wall = time.monotonic() - start
    traj = Trajectory(
        id=eid, domain=domain, source=f"collect.{domain}/{policy.name}@{policy.collector.version}",
        steps=steps, task=agent.instruction, tools=tools, initial_observation=first,
        meta={**agent.meta, "index": index, "seed": cfg.seed, "policy": policy.name,
              "timings": {"reset_s": round(reset_s, 4), "wall_s": round(wall, 4),
                          "step_s": round((wall - reset_s) / len(steps), 4)}})
    validate(asdict(traj))
    return {**result, "status": "ok", "steps": len(steps), "line": traj.to_json()}


# --- workers: each process holds one policy and one environment ----------------------------

_WORKER: dict = {}


def _worker_cfg(cfg):
    """The part of the config a worker needs, as a plain picklable container."""
    return OmegaConf.create({"seed": cfg.seed, "collect": OmegaConf.to_container(cfg.collect),
                             "policy": OmegaConf.to_container(cfg.policy),
                             "extra_domains": OmegaConf.to_container(cfg.data.extra_domains)})


def _init_worker(cfg_dict: dict, spawned: bool = True) -> None:
    if spawned:  # a fresh process has no logging set up; the caller's is left alone
        logging.basicConfig(level=logging.WARNING)
        register_extra(cfg_dict["extra_domains"])  # it starts with the built-in domains only
    _WORKER.clear()
    _WORKER.update(cfg=OmegaConf.create(cfg_dict))


def _work(job: tuple[str, int]) -> dict:
    """One episode; a worker builds each domain's policy and environment on first use."""
    domain, index = job
    cfg = _WORKER["cfg"]
    if domain not in _WORKER:
        collector = get_collector(domain, cfg.collect)
        _WORKER[domain] = (make_policy(cfg, collector), collector.environment())
    policy, env = _WORKER[domain]
    return run_episode(cfg, policy, env, index)


def _results(cfg, todo: list[tuple[str, int]], workers: int) -> Iterator[dict]:
    if workers <= 1:  # in-process: no spawn cost, easy to debug
        _init_worker(OmegaConf.to_container(_worker_cfg(cfg)), spawned=False)
        for index in todo:
            yield _work(index)
        return
    pending = list(reversed(todo))
    cfg_dict = OmegaConf.to_container(_worker_cfg(cfg))

    def failed(job, error):
        domain, index = job
        return {"index": index, "id": episode_id(cfg.policy.name, cfg.seed, index, domain),
                "domain": domain, "steps": 0, "status": "failed", "error": error}

    while pending:
        # A worker that dies (not an episode that fails) breaks the pool: its episodes count
        # as failed and the rest go on in a fresh pool.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(cfg_dict,)) as pool:
            running, broken = {}, False
            while (pending or running) and not broken:
                while pending and len(running) < 2 * workers:
                    index = pending.pop()
                    running[pool.submit(_work, index)] = index
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    index = running.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool as e:
                        broken = True
                        yield failed(index, f"worker died: {e}")
                    except Exception as e:  # noqa: BLE001 - a bug in one episode, not the run
                        yield failed(index, f"{type(e).__name__}: {e}")
            for index in running.values():
                yield failed(index, "worker pool broke")


# --- the output file -----------------------------------------------------------------------

def load_done(path: Path) -> set[str]:
    """Ids already in `path`; a partial or corrupt line (a kill mid-write) is dropped."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    lines, tail = data.split(b"\n")[:-1], data.split(b"\n")[-1]
    done, good = set(), []
    for line in lines:
        try:
            done.add(json.loads(line)["id"])
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            log.warning("%s: dropping a corrupt line (it will be collected again)", path)
    if tail or len(good) != len(lines):
        if tail:
            log.warning("%s: dropping a partial last line (it will be collected again)", path)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in good))
        os.replace(tmp, path)
    return done


def collectable_domains(cfg) -> list[str]:
    """The selected domains that have a collector; the others enter through import."""
    register_extra(cfg.data.extra_domains)
    names, selected = set(collector_names()), run_domains(cfg.data.domains, cfg.data.extra_domains)
    skipped = [d for d in selected if d not in names]
    if skipped:
        log.warning("no collector for %s: their trajectories come from import", ", ".join(skipped))
    return [d for d in selected if d in names]


def collect_stage(cfg, paths) -> dict:
    """`lwm collect`: into the run's collect/ folder."""
    return collect(cfg, paths.stage("collect"))


def collect(cfg, out_dir: Path) -> dict:
    """Collect cfg.collect.num_trajectories episodes per domain (or replay a file) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "trajectories.jsonl"
    # Policies are built here too, so a bad policy config fails before any worker starts.
    policies = {d: make_policy(cfg, get_collector(d, cfg.collect)) for d in collectable_domains(cfg)}
    done = load_done(path)
    jobs = [(d, i) for d, p in policies.items() for i in range(p.size())]
    # Interleave domains so every domain makes progress from the start.
    jobs.sort(key=lambda job: (job[1], job[0]))
    todo = [(d, i) for d, i in jobs if episode_id(cfg.policy.name, cfg.seed, i, d) not in done]
    total = len(jobs)
    tracker = Tracker(cfg, "collect", out_dir)
    counts, per_domain, steps, start = Counter(), Counter(), 0, time.monotonic()
    with open(path, "a", encoding="utf-8") as out, \
            tqdm(total=total, initial=total - len(todo), desc=f"collect {cfg.policy.name}",
                 unit="traj", dynamic_ncols=True) as bar:
        for r in _results(cfg, todo, cfg.collect.workers):
            counts[r["status"]] += 1
            if r["status"] == "ok":
                out.write(r["line"] + "\n")
                out.flush()
                steps += r["steps"]
                per_domain[r["domain"]] += 1
            else:
                log.warning("episode %s %s: %s", r["id"], r["status"], r.get("error"))
                if r["status"] == "quarantined":
                    with open(out_dir / "quarantine.jsonl", "a", encoding="utf-8") as q:
                        q.write(json.dumps({k: r.get(k) for k in ("id", "index", "error", "meta")},
                                           ensure_ascii=False, default=str) + "\n")
            elapsed = time.monotonic() - start
            bar.update(1)
            bar.set_postfix(steps_s=f"{steps / max(elapsed, 1e-9):.0f}",
                            failed=counts["failed"] + counts["empty"], refresh=False)
            tracker.log({"steps": steps, "steps_per_s": steps / max(elapsed, 1e-9)},
                        step=sum(counts.values()))
    elapsed = time.monotonic() - start
    return tracker.finish({
        "policy": cfg.policy.name, "workers": cfg.collect.workers, "domains": dict(per_domain),
        "trajectories": counts["ok"], "trajectories_total": len(done) + counts["ok"],
        "skipped_existing": total - len(todo), "steps": steps,
        "steps_per_s": round(steps / elapsed, 2) if elapsed > 0 else 0.0,
        "failures": counts["failed"], "empty": counts["empty"],
        "quarantined": counts["quarantined"], "output": str(path)})
