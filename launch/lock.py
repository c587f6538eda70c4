"""One writer per run directory: a job holds <run>/.lwm.lock (an flock, which the kernel releases
when the process dies, however it dies) while it runs a stage; a second job gets an error naming
the holder. Of a multi-process job only global rank 0 takes it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path


class RunDirInUse(RuntimeError):
    pass


def job_rank() -> int:
    """This process's rank in its job (torchrun's RANK, or the Slurm task), before any group exists."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


@contextmanager
def run_lock(root: Path, stage: str):
    if job_rank() != 0:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lwm.lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        try:
            holder = json.loads(f.read() or "{}")
        except ValueError:
            holder = {}
        f.close()
        raise RunDirInUse(
            f"{root} is in use by another lwm job (stage {holder.get('stage', '?')}, pid "
            f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}); "
            "wait for it to end, or give this job another run_name=") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
