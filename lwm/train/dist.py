"""Process-group plumbing shared by the backends: torchrun's environment in, one group out."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def submitit_env() -> dict[str, str]:
    """torchrun's variables for a task of a submitit Slurm job (cluster=slurm: one Slurm task per
    GPU, no torchrun), from the task's Slurm variables; {} anywhere else (torchrun already set them,
    cluster=local, or a one-task job, which stays a plain world-1 process)."""
    environ = os.environ
    if (environ.get("SUBMITIT_EXECUTOR") != "slurm" or "WORLD_SIZE" in environ
            or "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", 1)) <= 1):
        return {}
    from submitit.helpers import TorchDistributedEnvironment
    # MASTER_ADDR: the first node of the array task's allocation; MASTER_PORT: $MASTER_PORT if set,
    # else one drawn from the job id, so every task agrees and array tasks sharing a node differ.
    env = TorchDistributedEnvironment()
    return {"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.local_world_size), "MASTER_ADDR": env.master_addr,
            "MASTER_PORT": str(env.master_port)}


def init(always: bool = False) -> tuple[int, int]:
    """(rank, world size); joins torchrun's group when launched by it, or the job's group when run
    as a task of a multi-task submitit Slurm job. Outside both: world 1, with a one-rank group only
    when `always` (DeepSpeed and Megatron need one). NCCL with a GPU, gloo on CPU (the tests' path)."""
    # Not CUDA_VISIBLE_DEVICES: every task sees the node's GPUs and picks LOCAL_RANK's below.
    os.environ.update(submitit_env())
    if "WORLD_SIZE" not in os.environ:
        if not always:
            return 0, 1
        if not dist.is_initialized():
            # A private one-rank group on a free port; no RANK/WORLD_SIZE/MASTER_* in the
            # environment, so nothing this process starts later believes it is part of a job.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed asks for it; harmless without WORLD_SIZE
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_resume_dp(saved: dict, dp: int, how_to_reshard: str) -> None:
    """A checkpoint written with another data-parallel size holds optimizer shards laid out for
    that size: refuse it by name instead of loading mis-sharded state."""
    was = saved.get("dp_size")
    if was is not None and int(was) != dp:
        raise RuntimeError(f"resume: the checkpoint was written with data-parallel size {was}, this job "
                           f"has {dp}; {how_to_reshard}")


def is_main() -> bool:
    """Rank 0 of the process group, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
