"""Slurm options derived from a cluster config (`cluster.*`), shared by the job script the
launcher renders (launch/slurm.py) and Hydra's submitit launcher
(configs/hydra/launcher/lwm_slurm.yaml, through the `lwm.submitit_options` resolver)."""

from __future__ import annotations

import re
import shlex


def sbatch_options(c) -> dict:
    """The optional #SBATCH settings of a cluster config: unset ones are left out, not passed empty."""
    opts = {k: v for k, v in (("partition", c.partition), ("account", c.account), ("qos", c.qos),
                              ("constraint", c.constraint)) if v}
    if c.exclusive:
        opts["exclusive"] = True
    if c.requeue:
        opts["requeue"] = True  # `scontrol requeue` is refused for a job submitted without it
    return opts


def submitit_options(c) -> dict:
    """`additional_parameters` of the submitit launcher: sbatch_options plus the per-task resources.
    There one Slurm task runs per GPU, so the node's cpus_per_task (one torchrun task per node in
    the template) is split between them."""
    return {**sbatch_options(c), "cpus-per-task": max(c.cpus_per_task // max(c.gpus_per_node, 1), 1),
            "mem": f"{c.mem_gb}G" if c.mem_gb else "0"}


def env_exports(c) -> list[str]:
    """`export KEY=value` for each cluster.env entry, the value shell-quoted: it is exported as
    written (`a b` stays one value; `$VAR` is not expanded: expansions belong in cluster.setup)."""
    bad = [k for k in c.env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k))]
    if bad:
        raise ValueError(f"cluster.env: {', '.join(map(repr, bad))} is not a shell variable name")
    return [f"export {k}={shlex.quote(str(v))}" for k, v in c.env.items()]


def submitit_setup(c) -> list[str]:
    """`setup` of the submitit launcher: the lines its array script runs before srun, cluster.setup
    (module loads, a venv) and then cluster.env. That script does not `set -u`, so `conda activate`
    and Lmod functions that read unset variables run as they would in a login shell."""
    return [*c.setup, *env_exports(c)]
