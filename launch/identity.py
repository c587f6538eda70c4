"""Run identity: what made each stage's output, recorded in <run>/<stage>/identity.json.

A stage's identity is the config keys that shape its output (SHAPES), the fingerprints of its
inputs (prepare's manifest, the tokenizer, the checkpoint it starts from: the previous stage's
identity, or the content of a checkpoint given by path) and, for the record, the code version.
Before a stage runs, its identity is compared with the recorded one:

- the same, or different only in keys that may change between runs (MAY_CHANGE: step counts,
  logging, checkpoint interval, workers): the stage resumes or is skipped as finished;
- otherwise it refuses, naming every differing key, unless `<stage>.resume=never`, which starts the
  stage over: its folder (checkpoints, final model, metrics) is cleared first.

The record is written when the stage starts, with the whole resolved config beside it
(<stage>/config.yaml), so what is recorded is what trains.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from lwm.identity import checkpoint_fingerprint, digest, flat, tokenizer_fingerprint
from lwm.parallel_config import parallel_plan

# The config keys that shape each stage's output (a prefix covers its whole subtree).
SHAPES = {
    "collect": ["seed", "data.domains", "data.extra_domains", "policy", "collect"],
    "cpt": ["seed", "model", "cpt", "backend.name", "backend.dtype", "data.tokenizer"],
    "sft": ["seed", "model", "sft", "backend.name", "backend.dtype"],
    "rl": ["seed", "model", "rl", "backend.name", "backend.dtype"],
}
# Keys that may change between runs of one stage: how long, how often it logs and saves, how
# many workers; the endpoint's connection settings; grad_accum, as long as the global batch
# (recorded as <stage>.global_batch) stays. Everything else in SHAPES must match.
# (collect.max_steps is an episode's length, so it shapes what is collected: not listed.)
MAY_CHANGE = ["cpt.max_steps", "sft.max_steps", "rl.max_steps", "*.grad_accum", "*.save_every", "*.log_every", "*.resume", "collect.workers",
              "collect.num_trajectories", "*.concurrency", "*.timeout_s", "*.max_retries", "*.api_key_env",
              "policy.replay_path", "rl.judge_max_failure_rate", "rl.judge_failure_window"]
# The stage whose final model a training stage starts from when <stage>.init is empty.
STARTS_FROM = {"cpt": None, "sft": "cpt", "rl": "sft"}


class IdentityMismatch(RuntimeError):
    pass


def config_keys(cfg, stage: str) -> dict:
    keys = {}
    for key in SHAPES[stage]:
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        keys.update(flat(value, key))
    return keys


def _may_change(key: str) -> bool:
    return any(fnmatch.fnmatch(key, pattern) for pattern in MAY_CHANGE)


def _code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def inputs_of(cfg, stage: str, root: Path) -> dict:
    """Fingerprints of what the stage reads."""
    if stage == "collect":
        return {}
    manifest = root / "prepare" / "manifest.json"
    inputs = {"prepare": json.loads(manifest.read_text()).get("fingerprint") if manifest.exists() else None}
    tokenizer = Path(cfg.data.tokenizer) if cfg.data.tokenizer else root / "prepare" / "tokenizer"
    if stage == "cpt" and (tokenizer / "tokenizer.json").exists():
        inputs["tokenizer"] = tokenizer_fingerprint(tokenizer)
    init = cfg[stage].init or (cfg.model.path if stage == "cpt" else "")
    if init:
        inputs["init"] = checkpoint_fingerprint(init)
    elif STARTS_FROM[stage]:
        previous = root / STARTS_FROM[stage] / "identity.json"
        inputs["init"] = (f"{STARTS_FROM[stage]}:" + digest(json.loads(previous.read_text())["shapes"])
                          if previous.exists() else None)
    else:
        inputs["init"] = "fresh model from config"
    return inputs


def data_parallel_size(cfg) -> int:
    """The data-parallel size this job will run with, from its launcher's environment."""
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
    try:
        return parallel_plan(cfg.model, cfg.backend, world).dp
    except ValueError:
        return world  # the engine refuses the layout itself, with its own message


def identity_of(cfg, stage: str, root: Path) -> dict:
    keys = config_keys(cfg, stage)
    if stage in STARTS_FROM:
        # What trains is the global batch; grad_accum follows the data-parallel size, which may
        # change on resume (2 ranks x 1 micro-batch = 1 rank x 2).
        t = cfg[stage]
        keys[f"{stage}.global_batch"] = t.batch_size * t.grad_accum * data_parallel_size(cfg)
    return {"stage": stage,
            "shapes": {"config": {k: v for k, v in keys.items() if not _may_change(k)},
                       "inputs": inputs_of(cfg, stage, root)},
            "may_change": {k: v for k, v in keys.items() if _may_change(k)},
            "code": _code_version()}


def differences(old: dict, new: dict) -> list[str]:
    out = []
    for part in ("config", "inputs"):
        a, b = old["shapes"].get(part, {}), new["shapes"].get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<unset>") != b.get(key, "<unset>"):
                name = key if part == "config" else f"input {key}"
                out.append(f"{name}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}")
    return out


def _outputs(out: Path) -> list[Path]:
    """What a stage left that a rerun would build on (an empty folder holds nothing)."""
    return [p for p in (out / "final", out / "checkpoints", out / "trajectories.jsonl")
            if (p.is_dir() and any(p.iterdir())) or (p.is_file() and p.stat().st_size)]


def check(cfg, stage: str, root: Path) -> None:
    """Compare the stage's identity with its record; refuse, start over, or record it."""
    if stage not in SHAPES:
        return
    out = root / stage
    record = out / "identity.json"
    now = identity_of(cfg, stage, root)
    start_over = stage in STARTS_FROM and cfg[stage].resume == "never"
    if start_over:
        for path in _outputs(out) + [out / "metrics.json"]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif record.exists():
        diff = differences(json.loads(record.read_text()), now)
        if diff:
            how = (f"{stage}.resume=never starts {out} over" if stage in STARTS_FROM
                   else f"remove {out} to start it over")
            raise IdentityMismatch(
                f"{stage}: {out} was made with other settings or inputs:\n  " + "\n  ".join(diff) +
                f"\nTo keep it, rerun with the recorded values ({record}); {how}; or use another run_name=.")
    elif _outputs(out):
        how = f"{stage}.resume=never starts it over" if stage in STARTS_FROM else f"remove {out} to start it over"
        raise IdentityMismatch(f"{stage}: {out} holds outputs with no record of what made them ({record} is "
                               f"missing); {how}, or use another run_name=.")
    if not start_over and _finished(out, cfg, stage):
        return  # skipped as finished: the record keeps the values it trained with
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(now, indent=1, sort_keys=True, default=str))
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)


def _finished(out: Path, cfg, stage: str) -> bool:
    if stage not in STARTS_FROM or not (out / "final" / "complete").exists():
        return False
    try:
        return json.loads((out / "metrics.json").read_text()).get("steps") == cfg[stage].max_steps
    except (OSError, ValueError):
        return False
