"""What `lwm prepare` shows while it runs: one progress bar over the tasks of all its datatrove
steps, and a summary of what it wrote. Datatrove's own log (a dozen lines per task: pipeline,
stats, completions) goes to a file, <run>/prepare.logs/datatrove.log, not to the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.logging import setup_default_logger
from tqdm import tqdm

log = logging.getLogger("lwm.prepare")


class QuietLocalExecutor(LocalPipelineExecutor):
    """A local executor whose tasks log into `log_file` when `run` sets it. Datatrove points a
    task's console log at sys.stderr as the task starts, in whichever process runs it (this one,
    or a pool worker), so each task runs with sys.stderr on the file."""

    log_file: str | None = None

    def _launch_run_for_rank(self, rank, ranks_q, completed=None, completed_lock=None):
        if not self.log_file:
            return super()._launch_run_for_rank(rank, ranks_q, completed, completed_lock)
        try:
            with open(self.log_file, "a", encoding="utf-8") as f, contextlib.redirect_stderr(f):
                return super()._launch_run_for_rank(rank, ranks_q, completed, completed_lock)
        finally:
            setup_default_logger()  # datatrove's default sink on this process's stderr again


def _chain(last) -> list:
    """The executors `last` depends on, in the order they run, `last` included."""
    chain = []
    while last is not None:
        chain.append(last)
        last = getattr(last, "depends", None)
    return chain[::-1]


def _completed(ex) -> int:
    folder = Path(ex.logging_dir.path) / "completions"
    return len(os.listdir(folder)) if folder.is_dir() else 0


def run(last, log_file: Path, desc: str = "prepare") -> None:
    """Runs the chain of executors ending in `last` with datatrove's log in `log_file` and a bar
    counting finished tasks (those finished by an earlier, killed run included) on the console."""
    chain = _chain(last)
    if not all(isinstance(ex, QuietLocalExecutor) for ex in chain):
        last.run()  # Slurm: submitting prints the job ids, which are worth seeing
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for ex in chain:
        ex.log_file = str(log_file)
    total = sum(ex.world_size for ex in chain)
    bar = tqdm(total=total, desc=desc, unit="task", file=sys.stderr, dynamic_ncols=True)
    stop = threading.Event()

    def update():
        counts = [_completed(ex) for ex in chain]
        bar.n = sum(counts)
        step = next((Path(ex.logging_dir.path).name for ex, n in zip(chain, counts) if n < ex.world_size), "done")
        bar.set_postfix_str(step, refresh=False)
        bar.refresh()

    def poll():
        while not stop.wait(0.5):
            update()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with open(log_file, "a", encoding="utf-8") as f, contextlib.redirect_stderr(f):
            setup_default_logger()  # this process's datatrove messages (dependencies, stats) too
            last.run()
    except BaseException:
        log.error("prepare: a datatrove step failed; its log: %s", log_file)
        raise
    finally:
        setup_default_logger()
        stop.set()
        poller.join()
        update()
        bar.close()


def summary(manifest: dict, out: Path, log_file: Path) -> str:
    """What prepare wrote, in one line: sequences, samples, prompts and eval sets."""
    cpt = ", ".join(f"{split} {c['sequences']} x {c['tokens'] // max(c['sequences'], 1)} tokens"
                    for split, c in manifest["cpt"].items())
    evals = ", ".join(f"{d} {n}" for d, n in manifest["eval"].items()) or "none"
    return (f"prepare: wrote CPT sequences ({cpt}), {manifest['sft']['samples']} SFT samples, "
            f"{manifest['rl']['prompts']} RL prompts, eval sets ({evals}); tokenizer "
            f"{manifest['tokenizer']['source']} ({manifest['tokenizer']['vocab_size']} tokens) in {out}; "
            f"datatrove's log: {log_file}")
