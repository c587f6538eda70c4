"""What each stage reads from the stages before it, checked before the stage runs.

A missing input is named with the command that makes it ("run `lwm cpt run_name=x` first"),
instead of surfacing as the error of whichever library opens the path first (transformers'
"Repo id must be in the form ..." for a checkpoint folder that is not there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from launch.share import in_sweep


class MissingInput(FileNotFoundError):
    """A stage's input is absent: the CLI prints the message alone, without a traceback."""


@dataclass(frozen=True)
class Input:
    what: str                     # what the stage reads, in words
    files: tuple[str, ...]        # under the run folder; any one present is enough (globs allowed)
    writer: str                   # the command that writes it, suggested first
    instead: tuple[str, ...] = () # config keys that, when set, replace it (paths must exist)
    also: str = ""                # another way to make it, named in the advice


MODELS = ("rl/final/config.json", "sft/final/config.json", "cpt/final/config.json")
# Stage -> its inputs from earlier stages, in pipeline order (the order the missing ones are
# reported in: the first one's writer is the next command to run).
READS: dict[str, tuple[Input, ...]] = {
    "prepare": (Input("trajectories", ("collect/trajectories.jsonl", "ingest/*.jsonl"), "collect",
                      ("prepare.input", "data.trajectories"), also="`lwm ingest ...`"),),
    "cpt": (Input("CPT shards", ("prepare/cpt/train.bin",), "prepare"),),
    "sft": (Input("SFT samples", ("prepare/sft/*.parquet",), "prepare"),
            Input("CPT model (sft starts from it)", ("cpt/final/config.json",), "cpt", ("sft.init",))),
    "rl": (Input("RL prompts", ("prepare/rl/*.parquet",), "prepare"),
           Input("SFT model (rl starts from it)", ("sft/final/config.json",), "sft", ("rl.init",))),
    "eval": (Input("held-out sets", ("prepare/eval/*_test.jsonl",), "prepare", ("eval.input",)),
             Input("trained model to score", MODELS, "cpt",
                   ("eval.checkpoint", "eval.endpoint.base_url"), also="`lwm sft`/`lwm rl`")),
    "serve": (Input("trained model to serve", MODELS, "cpt", ("serve.checkpoint",)),),
}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _run_args(cfg, root: Path) -> str:
    """The override that points a command at this run: its name, when the run lives where the
    name puts it. A sweep's job reads the stages it does not run from the base run beside the
    sweep folder (launch/share.py), so that is the run to make them in."""
    sweep = in_sweep()
    if sweep is not None:
        root = sweep.parent / cfg.run_name
    if root.name == cfg.run_name:
        return f"run_name={cfg.run_name}" + ("" if sweep is None or root.parent.name == "runs"
                                             else f" hydra.run.dir={_shown(root)}")
    return f"hydra.run.dir={_shown(root)}"


def _present(root: Path, pattern: str) -> bool:
    return any(root.glob(pattern)) if any(c in pattern for c in "*?[") else (root / pattern).exists()


def check(stage: str, cfg, root: Path) -> None:
    """Raises MissingInput, naming each missing folder and the command that makes it, when an
    input of `stage` is neither in the run folder `root` nor replaced by a config key."""
    missing, sweep = [], in_sweep() is not None
    for need in READS.get(stage, ()):
        given = {k: OmegaConf.select(cfg, k, default=None) for k in need.instead}
        given = {k: v for k, v in given.items() if v}
        for key, value in given.items():
            for v in ([value] if isinstance(value, str) else list(value)):
                if "://" not in str(v) and not Path(v).exists():
                    missing.append(f"{key}={v} does not exist")
        if given or any(_present(root, f) for f in need.files):
            continue
        # a model is named by its folder (config.json only marks it as complete)
        where = " or ".join(_shown(root / f.removesuffix("/config.json")) for f in need.files)
        run = f"run `lwm {need.writer} {_run_args(cfg, root)}`"
        if need.also:
            run += f" (or {need.also})"
        instead = " or ".join(f"{k}=..." for k in need.instead + ((f"reuse.{need.writer}",) if sweep else ()))
        missing.append(f"no {need.what} at {where}: {run} first"
                       + (f" (or set {instead})" if instead else ""))
    if missing:
        raise MissingInput("\n".join(missing))
