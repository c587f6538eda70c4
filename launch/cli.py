"""`lwm STAGE [hydra overrides]`: one entry point for every stage.

STAGE is collect, prepare, cpt, sft, rl, eval, or run (all of them in order); `ingest` turns
existing logs into trajectories that prepare picks up; `serve` puts a checkpoint behind an
OpenAI-compatible endpoint. Everything after the stage is Hydra's:
overrides, `-m` sweeps, `--cfg job`, `--help`; `--dry-run` prints the Slurm job script and the
parallel layout of the composed config instead of running.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from launch import CONFIG_DIR
from launch.stages import COMMANDS
from lwm.config import register_configs

USAGE = f"usage: lwm {{{','.join(COMMANDS)}}} [hydra overrides]"


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig):
    from launch.stages import run_stage
    return run_stage(cfg)


_VALUED = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
           "--config-dir", "-cd", "--experimental-rerun"}


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    flags, overrides, i = [], [], 0
    while i < len(args):
        if args[i] in _VALUED and i + 1 < len(args):
            flags += args[i:i + 2]
            i += 2
            continue
        (flags if args[i].startswith("-") else overrides).append(args[i])
        i += 1
    return flags, overrides


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    stage, rest = argv[0], argv[1:]
    if "--dry-run" in rest:  # the Slurm job script and parallel layout, nothing submitted
        from launch.slurm import main as slurm_main
        sys.exit(slurm_main(["--dry-run", stage, *[a for a in rest if a != "--dry-run"]]))
    register_configs()
    flags, overrides = _split_flags(rest)
    # Hydra's argparse wants its flags before the overrides, which are one positional list.
    sys.argv = ["lwm " + stage, *flags, f"stage={stage}", *overrides]
    _hydra_entry()


if __name__ == "__main__":
    main()
