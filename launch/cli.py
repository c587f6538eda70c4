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

HELP = """usage: lwm COMMAND [KEY=VALUE ...] [-m] [--cfg job [--resolve]] [--dry-run]

commands:
  collect   trajectories from real environments, into runs/<run_name>/collect
  prepare   validate, redact, dedup, split and tokenize: CPT/SFT/RL shards and eval sets
  cpt       continued pretraining on the packed shards
  sft       next-state prediction, loss on the observation
  rl        GRPO or GSPO with the judge + rule reward
  eval      score checkpoints or endpoints on held-out or AgentWorldBench sets
  run       all of them in order: collect, prepare, cpt, sft, rl, eval
  ingest    existing logs into trajectories that prepare picks up
  serve     a checkpoint behind an OpenAI-compatible endpoint

after the command:
  KEY=VALUE        set any config key or preset (cpt.lr=1e-4 model=qwen3_5_35b_a3b backend=megatron)
  -m               a sweep: one job per combination of comma-separated values
  --cfg job        print the composed config (add --resolve for every value resolved)
  --dry-run        print the Slurm job script and the parallel layout; submit nothing
  --help           the command's config groups and their presets (Hydra's help)

README.md has the commands of every stage; docs/architecture.md how the code is laid out."""


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
    if argv and argv[0] in ("-h", "--help", "help"):
        print(HELP)
        sys.exit(0)
    if not argv or argv[0] not in COMMANDS:
        print(HELP if not argv else f"lwm: unknown command '{argv[0]}'\n\n{HELP}", file=sys.stderr)
        sys.exit(2)
    stage, rest = argv[0], argv[1:]
    if "--dry-run" in rest:  # the Slurm job script and parallel layout, nothing submitted
        from launch.slurm import main as slurm_main
        sys.exit(slurm_main(["--dry-run", stage, *[a for a in rest if a != "--dry-run"]]))
    register_configs()
    flags, overrides = _split_flags(rest)
    if {"--cfg", "-c"} & set(flags) and not any(o.startswith("run_dir=") for o in overrides):
        # printing the config runs no job, so Hydra has no output dir to resolve run_dir from:
        # the folder a run would get stands in for it
        overrides.append("run_dir=${hydra:run.dir}")
    # Hydra's argparse wants its flags before the overrides, which are one positional list.
    sys.argv = ["lwm " + stage, *flags, f"stage={stage}", *overrides]
    _hydra_entry()


if __name__ == "__main__":
    main()
