"""The torchrun command line of a stage, for one machine (cluster=local) or inside a Slurm job."""

from __future__ import annotations

import shlex

from lwm.parallel_config import world_size_of


def nproc_per_node(ccfg) -> int:
    return max(ccfg.gpus_per_node, 1)


def local_command(ccfg, stage: str, overrides: list[str], nproc: int | None = None) -> list[str]:
    """torchrun on this machine (standalone rendezvous): `cluster=local` with several ranks."""
    return ["torchrun", "--standalone", f"--nproc-per-node={nproc or nproc_per_node(ccfg)}",
            "-m", "lwm.cli", stage, *overrides]


def quoted(overrides: list[str]) -> str:
    return " ".join(shlex.quote(o) for o in overrides)


def world(ccfg) -> int:
    return world_size_of(ccfg)
