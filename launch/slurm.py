"""Slurm jobs for a stage: an sbatch script with srun + torchrun inside, rendered from the config.

    python -m launch.slurm --dry-run cpt model=qwen3_5_35b_a3b backend=megatron cluster=slurm_8xh100
    python -m launch.slurm cpt ...        # writes <runs>/<run_name>/slurm/job.sbatch and sbatch-es it

The dry run prints the exact job script and the parallel layout without touching Slurm; a layout
whose sizes do not divide prints the error and no script (exit 1). Sweeps (`lwm cpt -m ...` with
cluster=slurm) go through Hydra's submitit launcher instead and become job arrays, checked the same
way first (launch/submit.py).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from string import Template

from lwm.cluster import env_exports, sbatch_options
from lwm.parallel_config import parallel_plan, world_size_of

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "slurm" / "lwm_torchrun.sbatch.tmpl"


def compose(stage: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from launch import CONFIG_DIR
    from lwm.config import register_configs
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose("config", overrides=[f"stage={stage}", "run_dir=unused", *overrides])


def nproc_per_node(ccfg) -> int:
    return max(ccfg.gpus_per_node, 1)


def quoted(overrides: list[str]) -> str:
    return " ".join(shlex.quote(o) for o in overrides)


def render(cfg, stage: str, overrides: list[str], runs_dir: str = "runs") -> str:
    c = cfg.cluster
    if c.gpus_per_node < 1:
        raise ValueError(f"cluster={c.name}: gpus_per_node = {c.gpus_per_node}; Slurm jobs run on GPU nodes "
                         "(use cluster=local on a CPU machine)")
    job_dir = f"{runs_dir}/{cfg.run_name}/slurm"
    optional = [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}" for k, v in sbatch_options(c).items()]
    if c.requeue:
        # B: the batch shell gets USR1, and forwards the request to the trainers by file.
        optional.append(f"#SBATCH --signal=B:USR1@{c.signal_seconds}")
    # The run is pinned by name so a requeued job finds its own checkpoints.
    job_overrides = [o for o in overrides if not o.startswith("run_name=")] + [f"run_name={cfg.run_name}"]
    return Template(TEMPLATE.read_text()).substitute(
        job_name=f"lwm-{stage}-{cfg.run_name}", nodes=c.nodes, gpus_per_node=c.gpus_per_node,
        cpus_per_task=c.cpus_per_task, mem=f"{c.mem_gb}G" if c.mem_gb else "0",
        time=f"{c.time_minutes // 60:02d}:{c.time_minutes % 60:02d}:00", job_dir=job_dir,
        optional_lines="\n".join(optional), setup="\n".join(c.setup),
        env="\n".join(env_exports(c)),
        master_port=c.master_port, signal_seconds=c.signal_seconds,
        nproc_per_node=nproc_per_node(c), stage=stage, overrides=quoted(job_overrides),
        requeue_line=('scontrol requeue "$SLURM_JOB_ID"' if c.requeue else ":"))


def check_layout(cfg) -> tuple[str, str | None]:
    """The job's shape and parallel layout, and the error that refuses it (None when it holds)."""
    world = world_size_of(cfg.cluster)
    head = (f"backend={cfg.backend.name} model={cfg.model.name} cluster={cfg.cluster.name}: "
            f"{cfg.cluster.nodes} node(s) x {cfg.cluster.gpus_per_node} GPU(s)")
    try:
        return head + "\n" + parallel_plan(cfg.model, cfg.backend, world).describe(), None
    except ValueError as err:
        return head, str(err)


def layout(cfg) -> str:
    text, error = check_layout(cfg)
    return text if error is None else f"{text}\nINVALID {error}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.slurm")
    ap.add_argument("--dry-run", action="store_true", help="print the job script and layout; submit nothing")
    ap.add_argument("stage")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = compose(args.stage, args.overrides)
    report = "# parallel layout\n# " + layout(cfg).replace("\n", "\n# ")
    if check_layout(cfg)[1] is not None:  # the error and no script: such a job is never submitted
        print(report, file=sys.stdout if args.dry_run else sys.stderr)
        return 1
    script = render(cfg, args.stage, args.overrides)
    if args.dry_run:
        print(report)
        print(script)
        return 0
    path = ROOT / "runs" / cfg.run_name / "slurm" / "job.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    return subprocess.run(["sbatch", str(path)], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
