"""prepare's helper processes die with it, SIGKILL included.

Datatrove's local executor runs a Manager process (forked from prepare) and a pool of workers
(forked by multiprocess's forkserver, which prepare starts). A prepare killed with SIGKILL runs
no cleanup, and they used to live on, still writing into the work folder. While `armed()`, every
process forked asks the kernel for SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG, Linux):
the Manager dies with prepare; the forkserver exits by itself when its last client (prepare and
the Manager) is gone; the workers, forked by the forkserver, die with it. The forkserver imports
this module (its preload) and arms itself from the variable `armed()` sets.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from contextlib import contextmanager

ENV = "LWM_PREPARE_LIFELINE"
PR_SET_PDEATHSIG = 1
_armed = bool(os.environ.get(ENV))  # true in the forkserver prepare started
_parent = 0


def _before_fork() -> None:
    global _parent
    _parent = os.getpid()


def _after_fork_in_child() -> None:
    if _armed:
        die_with_parent(_parent)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` (the process that forked it) dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


@contextmanager
def armed():
    """Processes forked inside this block, and the workers of the forkserver it starts, die with
    their parent."""
    global _armed
    import multiprocess.forkserver
    server = multiprocess.forkserver._forkserver
    if __name__ not in server._preload_modules:
        server.set_forkserver_preload([*server._preload_modules, __name__])
    before = os.environ.get(ENV)
    os.environ[ENV], _armed = str(os.getpid()), True
    try:
        yield
    finally:
        _armed = False
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
