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
        """The parquet shards prepare wrote for `name` (sft, rl), in order."""
        files = sorted(str(p) for p in (self.prepared / name).glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {name} shards in {self.prepared / name}: run `lwm prepare` first")
        return files

    def model(self, stage: str) -> Path:
        return self.root / stage / "final"


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
