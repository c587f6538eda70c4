"""Slurm options derived from a cluster config (`cluster.*`), shared by the job script the
launcher renders (launch/slurm.py) and Hydra's submitit launcher
(configs/hydra/launcher/lwm_slurm.yaml, through the `lwm.submitit_options` resolver)."""

from __future__ import annotations


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
