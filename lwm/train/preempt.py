"""Preemption: has the Slurm job script asked this run to checkpoint and stop?

The batch script touches $LWM_PREEMPT_FILE when Slurm signals USR1 (see slurm/lwm_torchrun.sbatch.tmpl);
a file on the shared run directory reaches every rank on every node, which a signal through
srun and torchrun does not reliably do. A USR1 sent to this process directly counts too.

Under Hydra's submitit launcher (cluster=slurm) Slurm signals every task itself, with submitit's
signal (USR2). install() takes that signal over from submitit, whose own handler would requeue
at once, before anything is saved: here every rank saves first, and requeue_if_preempted() then
requeues the array task. The rerun loads the same pickled job (same overrides, same run dir) and
resumes from the checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

_signalled = False


def install() -> None:
    def _on_usr1(signum, frame):
        global _signalled
        _signalled = True
    signal.signal(signal.SIGUSR1, _on_usr1)
    if _in_submitit_job():
        import submitit
        signal.signal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG), _on_usr1)


def _in_submitit_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def requeue_if_preempted(result, requeue: bool) -> None:
    """After a stage returned {"preempted": True} in a submitit job: rank 0 requeues the job and
    every rank exits without a result, so the submitting side keeps waiting for the rerun (what
    submitit's own handler does). Elsewhere the batch script requeues (slurm/*.tmpl)."""
    if not (isinstance(result, dict) and result.get("preempted") and _in_submitit_job() and requeue):
        return
    if os.environ.get("SLURM_PROCID", "0") == "0":
        import submitit
        job_id = submitit.JobEnvironment().job_id  # <array>_<index> for an array task
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    sys.exit(-1)


def requested() -> bool:
    """True on every rank once preemption was asked for (collective when a group exists)."""
    path = os.environ.get("LWM_PREEMPT_FILE")
    local = _signalled or bool(path and Path(path).exists())
    import torch.distributed as dist
    if not dist.is_initialized():
        return local
    import torch
    flag = torch.tensor([int(local)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
