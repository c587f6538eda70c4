"""Stage outputs shared between runs: the jobs of a sweep, and stages taken from another run.

In a sweep (`lwm ... -m`), every stage a job runs lives in the sweep's store,
`runs/<run_name>-sweep/_shared/<stage>-<key>/`, and the job's `<stage>` folder links to it. The
key is what makes the output: the config keys that shape the stage (launch/identity.py's SHAPES,
prepare's data/prepare/ingest keys, step counts included) and the keys of the folders it reads.
Jobs whose keys agree share one folder, computed once: `lwm run -m sft.lr=a,b` collects, prepares
and trains CPT once; the sweep's SFT and RL stages get one folder per value. A job takes a flock on
the shared folder while it runs the stage there, so jobs of a Slurm array wait for the one
computing it, then find it finished (each stage skips or resumes finished work).

Stages a command does not run but reads (`lwm sft -m ...` reads prepare and cpt) come from
`reuse.<stage>=<folder>` when set, else from the base run `runs/<run_name>/<stage>` when it has
one, linked into the job: so `lwm run run_name=abl` then `lwm sft -m sft.lr=a,b run_name=abl`
trains both SFT jobs on that run's CPT model. `reuse.<stage>` works outside sweeps too.
Every link is logged, and each shared folder's key and settings are recorded beside it
(`_shared/<stage>-<key>.json`).
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from launch.identity import SHAPES, config_keys
from launch.lock import job_rank
from lwm.identity import digest

log = logging.getLogger("lwm")

# What each stage reads from earlier stages' folders (eval also reads every trained model).
READS = {"collect": (), "ingest": (), "prepare": ("collect", "ingest"), "cpt": ("prepare",),
         "sft": ("prepare", "cpt"), "rl": ("prepare", "sft"), "eval": ("prepare", "cpt", "sft", "rl"),
         "serve": ("cpt", "sft", "rl")}
# Keys that shape a stage beyond SHAPES (prepare has no identity record; its manifest checks it).
_KEYS = {**SHAPES, "prepare": ["seed", "data", "prepare", "ingest"]}
# Keys that change how a stage runs, never what it makes: jobs differing only here share.
_HOW = ["*.save_every", "*.log_every", "*.resume", "*.workers", "*.concurrency", "*.timeout_s",
        "*.max_retries", "*.api_key_env", "*.grad_accum", "prepare.tasks", "prepare.executor",
        "prepare.slurm.*", "rl.judge_max_failure_rate", "rl.judge_failure_window"]
SHAREABLE = tuple(_KEYS)


def in_sweep() -> Path | None:
    """The sweep folder when this process runs a job of a Hydra sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def fingerprint(folder: Path) -> str | None:
    """What a stage folder holds, for the keys of the stages that read it: a shared folder's key,
    else its recorded identity (prepare: its manifest), else its files' names and sizes."""
    folder = folder.resolve()
    shared = folder.with_name(folder.name + ".json")
    if shared.exists() and folder.parent.name == "_shared":
        return json.loads(shared.read_text())["key"]
    for name, pick in (("identity.json", lambda d: digest(d["shapes"])),
                       ("manifest.json", lambda d: d.get("fingerprint"))):
        if (folder / name).exists():
            return pick(json.loads((folder / name).read_text()))
    if folder.is_dir():
        return digest(sorted((p.name, p.stat().st_size) for p in folder.glob("*") if p.is_file()))
    return None


def share_key(cfg, stage: str, root: Path) -> dict:
    keys = {k: v for k, v in config_keys_of(cfg, stage).items()
            if not any(fnmatch.fnmatch(k, p) for p in _HOW)}
    if stage in ("cpt", "sft", "rl"):  # what trains is the global batch, however it is split
        t = cfg[stage]
        keys[f"{stage}.batch_size*grad_accum"] = t.batch_size * t.grad_accum
    reads = {r: fingerprint(root / r) for r in READS[stage] if (root / r).exists()}
    return {"stage": stage, "config": keys, "reads": reads, "key": digest([stage, keys, reads])}


def config_keys_of(cfg, stage: str) -> dict:
    if stage in SHAPES:
        return config_keys(cfg, stage)
    keys = {}
    for key in _KEYS[stage]:
        value = OmegaConf.select(cfg, key)
        keys[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return keys


def _link(link: Path, target: Path, why: str) -> None:
    """Make `link` point at `target` (relative when both are under one folder)."""
    target = target.resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return
        link.unlink()  # this job's settings changed since: the old shared folder stays for others
    elif link.exists():
        raise FileExistsError(f"{link} is a folder of this run; it cannot also be {target} ({why}). "
                              f"Remove {link}, or drop the setting that links it.")
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        rel = os.path.relpath(target, link.parent)
    except ValueError:
        rel = str(target)
    link.symlink_to(rel, target_is_directory=True)
    log.info("%s -> %s (%s)", link, target, why)


def _wait_for_link(link: Path, target: Path, seconds: float = 60) -> None:
    """Wait until rank 0 has linked `link` to `target` (a job's other ranks)."""
    deadline = time.monotonic() + seconds
    while link.resolve() != target.resolve():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{link} was not linked to {target} by rank 0 within {seconds:.0f} s")
        time.sleep(0.1)


def link_upstream(cfg, root: Path, runs: list[str]) -> None:
    """Link the folders the stages in `runs` read but do not make: reuse.<stage>, else (in a
    sweep) the base run's folder. Rank 0 links; the job's other ranks wait for its links."""
    sweep = in_sweep()
    base = sweep.parent / cfg.run_name if sweep else None
    plan = []
    for stage in dict.fromkeys(r for s in runs for r in READS.get(s, ())):
        if stage in runs:
            continue
        chosen = OmegaConf.select(cfg, f"reuse.{stage}") or ""
        if chosen:
            if not Path(chosen).is_dir():
                raise FileNotFoundError(f"reuse.{stage}={chosen}: no such folder")
            plan.append((stage, Path(chosen), f"reuse.{stage}"))
        elif base is not None and (base / stage).is_dir() and not (root / stage).exists():
            plan.append((stage, base / stage, f"the base run {base} of this sweep"))
    for stage, target, why in plan:
        if job_rank() == 0:
            _link(root / stage, target, why)
        else:
            _wait_for_link(root / stage, target)


def _refuse_changed(link: Path, store: Path, record: dict) -> None:
    """A sweep job whose stage already links to an output made with other settings (the same
    sweep folder rerun with new values) refuses, as an unshared run does (launch/identity.py):
    re-pointing it would silently replace what the job folder reported before."""
    if not link.is_symlink() or link.resolve() == store.resolve():
        return
    old_store = link.resolve()
    old_file = old_store.with_name(old_store.name + ".json")
    if old_store.parent.name != "_shared" or not old_file.exists():
        return  # a reuse.<stage> or base-run link: the user chose it, and may choose again
    from launch.identity import IdentityMismatch, differences
    old = json.loads(old_file.read_text())
    diff = differences(*({"shapes": {"config": r["config"], "inputs": r["reads"]}} for r in (old, record)))
    raise IdentityMismatch(
        f"{record['stage']}: {link} is this sweep job's earlier output, made with other settings:\n  "
        + "\n  ".join(diff or ["(same settings, other code or record)"])
        + f"\nA sweep folder holds one set of values per job: rerun with the recorded values "
          f"({old_file}), or use another hydra.sweep.dir= or run_name=. The earlier output stays "
          f"in {old_store}.")


@contextmanager
def shared_stage(cfg, stage: str, root: Path):
    """Run `stage` of a sweep job in the sweep's store (see the module doc); elsewhere, or for a
    stage with a reuse.<stage> folder, as it is."""
    sweep = in_sweep()
    if sweep is None or stage not in SHAREABLE or OmegaConf.select(cfg, f"reuse.{stage}"):
        yield
        return
    record = share_key(cfg, stage, root)
    store = sweep / "_shared" / f"{stage}-{record['key'][:16]}"
    if job_rank() != 0:  # rank 0 links and locks for the job; the others find its link
        _wait_for_link(root / stage, store)
        yield
        return
    store.mkdir(parents=True, exist_ok=True)
    # beside the folder, not in it: a stage may replace its whole folder (prepare publishes so)
    key_file = store.with_name(store.name + ".json")
    if not key_file.exists():
        key_file.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    _refuse_changed(root / stage, store, record)
    _link(root / stage, store, "shared by the sweep's jobs with these settings")
    with open(store.with_name(store.name + ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for the job computing %s", stage, store)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
