"""`lwm STAGE -m ... cluster=slurm`: Hydra's submitit launcher, made as safe as the single job.

Before anything is submitted, every job of the sweep is composed as its array task will compose
it and its parallel layout checked (launch/slurm.py: check_layout); one bad job refuses the whole
sweep, with that job's overrides and the layout error. The array script runs cluster.setup and
cluster.env before srun (lwm/cluster.py: submitit_setup). By default the command then waits for
every job, as Hydra's launcher does; `cluster.wait=false` returns once the array is submitted,
with its ids. `lwm STAGE -m ... --dry-run` (dry_run below) prints each job's overrides and layout
and the array script this launcher would submit, and submits nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from launch.slurm import check_layout

log = logging.getLogger(__name__)


def job_check(cfg) -> tuple[str, str | None]:
    """A job's layout and the error that refuses it, as for the single job (launch/slurm.py)."""
    text, error = check_layout(cfg)
    if error is None and cfg.cluster.gpus_per_node < 1:
        error = (f"cluster={cfg.cluster.name}: gpus_per_node = {cfg.cluster.gpus_per_node}; Slurm jobs run "
                 "on GPU nodes (use cluster=local on a CPU machine)")
    return text, error


def refusal(checked: list[tuple[int, list[str], str, str | None]]) -> str | None:
    bad = [c for c in checked if c[3] is not None]
    if not bad:
        return None
    lines = [f"sweep refused, nothing submitted: {len(bad)} of {len(checked)} job(s) cannot run"]
    for num, overrides, text, error in bad:
        lines += [f"  job #{num}: {' '.join(filter_overrides(overrides))}",
                  "    " + text.replace("\n", "\n    "), f"    {error}"]
    return "\n".join(lines)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """The submitit Slurm launcher, validating every job first; configs/hydra/launcher/lwm_slurm.yaml."""

    def check(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        """(job number, overrides, layout, error) of each job, composed as its array task composes it."""
        assert self.config is not None and self.hydra_context is not None
        checked = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            checked.append((num, list(overrides), *job_check(cfg)))
        return checked

    def executor(self):
        """The executor hydra_submitit_launcher 1.2's launch() builds, from the same parameters."""
        import submitit
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def script(self, num_jobs: int) -> str:
        """The sbatch script submitit writes for these jobs: one job, or an array of num_jobs."""
        from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string
        # a dry run needs no srun on this machine (submitit checks for it when built)
        with mock.patch.object(SlurmExecutor, "affinity", return_value=2):
            executor = self.executor()._executor
        params = {**executor.parameters, **({"map_count": num_jobs} if num_jobs > 1 else {})}
        return _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        message = refusal(self.check(job_overrides, initial_job_idx))
        if message:  # SystemExit: Hydra adds no traceback hint to the refusal
            print(f"lwm {self.config.stage}: {message}", file=sys.stderr)
            sys.exit(1)
        executor = self.executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                               Singleton.get_state()))
        # The array tasks run Hydra's own launcher (its __call__ composes and runs the job): a node
        # unpickles it without this module or the hydra_plugins entry that registers it.
        runner = submitit_launcher.SlurmLauncher.__new__(submitit_launcher.SlurmLauncher)
        runner.__dict__.update(self.__dict__)
        jobs = executor.map_array(runner, *zip(*job_params))
        wait = self.config.cluster.wait
        print(submitted(jobs, sweep_dir, initial_job_idx, wait), flush=True)
        if not wait:
            return []  # nothing ran here: the sweeper has no results to check
        return [j.results()[0] for j in jobs]


def submitted(jobs, sweep_dir: Path, initial_job_idx: int, wait: bool) -> str:
    array = str(jobs[0].job_id).split("_")[0]
    ids = jobs[0].job_id if len(jobs) == 1 else f"{jobs[0].job_id} .. {jobs[-1].job_id}"
    folder = Path(jobs[0].paths.folder).parent
    last = initial_job_idx + len(jobs) - 1
    runs = f"job{initial_job_idx}" + (f" .. job{last}" if last > initial_job_idx else "")
    return "\n".join([
        f"Submitted {len(jobs)} job(s) as Slurm job {array}: {ids}",
        f"  watch: squeue -j {array}   (sacct -j {array} once they end)",
        f"  logs:  {folder}/<job id>/<job id>_0_log.out, .err (rank 0; _<rank>_ for the others)",
        f"  runs:  {sweep_dir}/{runs}",
        "Waiting for every job to end (cluster.wait=false returns at once; Ctrl-C stops the waiting, "
        "not the jobs)." if wait else "Not waiting (cluster.wait=false): the jobs run on their own."])


def dry_run(stage: str, args: list[str]) -> int:
    """`lwm STAGE -m OVERRIDES --dry-run`: every job's overrides and parallel layout, then the
    array script, as the sweep would submit them; nothing submitted or written. Exit 1 (the
    errors, no script) when a job cannot run."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    from launch import CONFIG_DIR
    from lwm.config import register_configs
    register_configs()
    overrides = [f"stage={stage}", *(a for a in args if not a.startswith("-"))]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None, job_name="cli"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        HydraConfig.instance().set_config(cfg)
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
        sweeper = Plugins.instance().instantiate_sweeper(hydra_context=context, config=cfg,
                                                         task_function=lambda _: None)
        # by name: Hydra's plugin scan executes the module again, so the class is another object
        if type(sweeper).__name__ != "BasicSweeper":
            raise ValueError(f"--dry-run knows Hydra's basic sweeper, not {type(sweeper).__name__}")
        # the jobs BasicSweeper.sweep would hand the launcher, batch by batch
        task = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
        parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(
            [f"{k}={v}" for k, v in sweeper.params.items()] + list(task))
        batches = sweeper.split_arguments(parsed, sweeper.max_batch_size)
        launcher = sweeper.launcher
        ours = isinstance(launcher, SlurmLauncher)
        print(f"# sweep: {sum(map(len, batches))} job(s) in {len(batches)} submission(s); "
              f"launcher {type(launcher).__module__}.{type(launcher).__name__}; nothing submitted")
        if ours:
            print(f"# cluster.wait={str(cfg.cluster.wait).lower()}: the command " +
                  ("waits for every job to end" if cfg.cluster.wait else "returns once the jobs are submitted"))
        every, start, scripts = [], 0, []
        for batch in batches:
            checked = (launcher.check(batch, start) if ours else  # jobs run here: no GPU needed
                       [(start + i, list(o), *check_layout(hydra.config_loader.load_sweep_config(cfg, list(o))))
                        for i, o in enumerate(batch)])
            for num, job, text, error in checked:
                print(f"# job #{num}: {' '.join(filter_overrides(job))}\n#   " + text.replace("\n", "\n#   ")
                      + (f"\n#   INVALID {error}" if error else ""))
            every += checked
            if ours:
                scripts.append(launcher.script(len(batch)))
            start += len(batch)
    message = refusal(every)
    if message:
        print(f"lwm {stage}: {message}", file=sys.stderr)
        return 1
    if not ours:
        print("# no Slurm script: this launcher runs the jobs here (cluster=slurm or "
              "hydra/launcher=lwm_slurm submits them)")
    for script in scripts:
        print(f"# the sbatch script submitit writes and submits ({len(scripts)} submission(s)):\n{script}")
    return 0
