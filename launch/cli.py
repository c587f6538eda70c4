"""`lwm STAGE [hydra overrides]`: one entry point for every stage.

STAGE is collect, prepare, cpt, sft, rl, eval, or run (all of them in order); `ingest` turns
existing logs into trajectories that prepare picks up; `serve` puts a checkpoint behind an
OpenAI-compatible endpoint. Everything after the stage is Hydra's: overrides, `-m` sweeps,
`--cfg job`; `--help` lists the stage's keys (launch/usage.py); `--dry-run` prints the Slurm job
script and the parallel layout of the composed config instead of running.

Mistakes are answered in one line before anything is composed or run: an unknown command or key
with the closest one, a `+` on a key the schema has (launch/keys.py), a missing upstream output
with the command that makes it (launch/upstream.py).
"""

from __future__ import annotations

import sys

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from launch import CONFIG_DIR
from launch.keys import UsageError, check_overrides, closest
from launch.stages import COMMANDS
from launch.identity import IdentityMismatch
from launch.upstream import MissingInput
from lwm.config import register_configs


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from launch.stages import run_stage
    try:
        return run_stage(cfg)
    except (MissingInput, IdentityMismatch) as err:
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:  # the job's message, without a traceback; the sweep stops
            print(f"lwm: sweep job {hc.job.num} ({' '.join(hc.overrides.task)}) refused:", file=sys.stderr)
        _refuse(cfg.stage, err)


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


def _message(err: Exception) -> str:
    """A composition error's own message and the first line of its cause, without the traceback."""
    cause = err.__cause__
    return f"{err}\n{str(cause).splitlines()[0]}" if cause and str(cause) else str(err)


def _refuse(stage: str | None, err) -> None:
    for line in str(err).splitlines():
        print(f"lwm{' ' + stage if stage else ''}: {line}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        from launch.usage import main_help
        print(main_help())
        sys.exit(0)
    if not argv or argv[0] not in COMMANDS:
        if not argv:
            from launch.usage import main_help
            print(main_help(), file=sys.stderr)
            sys.exit(2)
        near = closest(argv[0], COMMANDS)
        _refuse(None, f"unknown command '{argv[0]}'" + (f"; did you mean {near}?" if near else "")
                + f" (commands: {', '.join(COMMANDS)}; `lwm --help` says what each does)")
    stage, rest = argv[0], argv[1:]
    flags, overrides = _split_flags([a for a in rest if a != "--dry-run"])
    try:
        check_overrides(stage, overrides)
        if {"-h", "--help"} & set(flags):
            from launch.usage import stage_help
            print(stage_help(stage, overrides))
            sys.exit(0)
    except UsageError as err:
        _refuse(stage, err)
    except (HydraException, OmegaConfBaseException) as err:  # composing the config for --help
        _refuse(stage, _message(err))
    if "--dry-run" in rest:  # the Slurm job script and parallel layout, nothing submitted
        from launch.slurm import main as slurm_main
        try:
            if {"-m", "--multirun"} & set(rest):  # a sweep: each job's layout and the array script
                from launch.submit import dry_run
                sys.exit(dry_run(stage, [a for a in rest if a not in ("--dry-run", "-m", "--multirun")]))
            sys.exit(slurm_main(["--dry-run", stage, *[a for a in rest if a != "--dry-run"]]))
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            _refuse(stage, _message(err))
    register_configs()
    if {"--cfg", "-c"} & set(flags) and not any(o.startswith("run_dir=") for o in overrides):
        # printing the config runs no job, so Hydra has no output dir to resolve run_dir from:
        # the folder a run would get stands in for it
        overrides.append("run_dir=${hydra:run.dir}")
    # Hydra's argparse wants its flags before the overrides, which are one positional list.
    sys.argv = ["lwm " + stage, *flags, f"stage={stage}", *overrides]
    _hydra_entry()


if __name__ == "__main__":
    main()
