"""Preemption: has the Slurm job script asked this run to checkpoint and stop?

The batch script touches $LWM_PREEMPT_FILE when Slurm signals USR1 (see slurm/lwm_torchrun.sbatch.tmpl);
a file on the shared run directory reaches every rank on every node, which a signal through
srun and torchrun does not reliably do. A USR1 sent to this process directly counts too.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_signalled = False


def install() -> None:
    def _on_usr1(signum, frame):
        global _signalled
        _signalled = True
    signal.signal(signal.SIGUSR1, _on_usr1)


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
