"""Run directory layout, metrics JSON, wandb and progress bars: shared by every stage."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


@dataclass(frozen=True)
class RunPaths:
    """Where every stage of one run writes; each stage reads the previous stage's folder."""
    root: Path

    def stage(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def trajectories(self) -> Path:
        return self.root / "collect" / "trajectories.jsonl"

    @property
    def prepared(self) -> Path:
        return self.root / "prepare"

    def shards(self, name: str) -> list[str]:
        """The parquet shards prepare wrote for `name` (sft, rl), in order, checked against its
        manifest: a shard missing, added or of another size is refused, not trained without."""
        folder = self.prepared / name
        files = sorted(str(p) for p in folder.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {name} shards in {folder}: run `lwm prepare` first")
        try:
            recorded = json.loads((self.prepared / "manifest.json").read_text()).get("files")
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{self.prepared / 'manifest.json'}: unreadable ({e}); the {name} "
                                    "shards cannot be checked: rerun `lwm prepare`") from None
        problems = verify_files(self.prepared, recorded, extras_in=(name,), only=f"{name}/")
        if problems:
            raise FileNotFoundError(f"the {name} shards in {folder} are not what `lwm prepare` wrote: "
                                    f"{'; '.join(problems)}. Rerun `lwm prepare` (it prepares "
                                    "again when its outputs are damaged)")
        return files

    def model(self, stage: str) -> Path:
        return self.root / stage / "final"


def file_record(path: Path) -> dict:
    """What a producing stage records of a file it wrote, for `verify_files`."""
    from lwm.identity import file_digest
    return {"bytes": path.stat().st_size, "blake2b": file_digest(path)}


def verify_files(root: Path, recorded: dict | None, extras_in: tuple[str, ...] = (),
                 only: str = "", hashes: bool = False) -> list[str]:
    """How the files under `root` differ from what their producer recorded (relative path ->
    `file_record`), one line per file, naming it: missing, of another size, of other content
    (with `hashes`), or present under one of the folders `extras_in` but not recorded. `only`
    limits the check to recorded paths starting with it. Empty when they agree."""
    if recorded is None:
        return [f"{root}: no record of its files (written by an older version): cannot be checked"]
    problems = []
    for rel, want in sorted(recorded.items()):
        if not rel.startswith(only):
            continue
        path = root / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, {want['bytes']} were written")
        elif hashes and file_record(path)["blake2b"] != want["blake2b"]:
            problems.append(f"{path} has other content than was written (blake2b)")
    for folder in extras_in:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.relative_to(root).as_posix() not in recorded:
                problems.append(f"{path} was not written by this stage")
    return problems


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write metrics atomically, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class Tracker:
    """wandb run (offline unless configured) plus a JSON metrics file for one stage."""

    def __init__(self, cfg, stage: str, out_dir: Path):
        self.stage, self.out_dir, self.start = stage, Path(out_dir), time.time()
        self.summary: dict[str, Any] = {}
        self.run = None
        if cfg.wandb.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb
            self.run = wandb.init(
                project=cfg.wandb.project, entity=cfg.wandb.entity or None, mode=cfg.wandb.mode,
                dir=str(self.out_dir), name=f"{cfg.run_name}-{stage}", group=cfg.run_name,
                job_type=stage, config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")

    @staticmethod
    def load(out_dir: Path) -> dict[str, Any]:
        """The metrics of a stage that already finished."""
        return json.loads((Path(out_dir) / "metrics.json").read_text())

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step=step)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.summary = {"stage": self.stage, "wall_s": round(time.time() - self.start, 2), **summary}
        write_metrics(self.out_dir / "metrics.json", self.summary)
        if self.run is not None:
            self.run.summary.update({k: v for k, v in self.summary.items()
                                     if isinstance(v, (int, float, str))})
            self.run.finish()
        return self.summary


def complete_rows(path: Path, key: str, keep=None) -> dict[str, dict]:
    """The rows of an append-only JSONL cache by `key` (a later row replaces an earlier one),
    optionally only those `keep` accepts. A line cut by a kill ends the read: it and anything
    after it are dropped, and the file is rewritten with the rows kept, so appends continue
    from a clean end."""
    rows = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if keep is None or keep(row):
                rows[row[key]] = row
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))
    return rows
