"""Slurm launch: the rendered job script (rendezvous, per-job dirs, requeue on preemption), the
dry run's layout, and a preemption played through the script with stand-in Slurm commands."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch.slurm import compose, layout, main, render

ARGS = ["model=qwen3_5_35b_a3b", "backend=megatron", "cluster=slurm_8xh100"]


def test_rendered_script_has_rendezvous_requeue_and_job_dirs():
    cfg = compose("cpt", [*ARGS, "run_name=r35", "cluster.nodes=2", "cluster.partition=gpu"])
    script = render(cfg, "cpt", [*ARGS, "run_name=r35", "cluster.nodes=2"])
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --output=runs/r35/slurm/%j.out", "--nnodes=2 --nproc-per-node=8",
                 "--rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT",
                 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "srun --kill-on-bad-exit=1", "-m launch.cli cpt model=qwen3_5_35b_a3b backend=megatron",
                 "cluster.nodes=2 run_name=r35", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script, line
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_dry_run_prints_script_and_layout(capsys):
    assert main(["--dry-run", "cpt", *ARGS]) == 0
    out = capsys.readouterr().out
    assert "world 8 = TP 1 x PP 2 x CP 1 x DP 4" in out and "EP 4" in out
    assert out.count("#SBATCH") >= 10 and "torchrun" in out
    # a layout that does not divide is shown with the field names, and the exit code says so
    assert main(["--dry-run", "cpt", *ARGS, "backend.megatron.expert_parallel=3"]) == 1
    out = capsys.readouterr().out
    assert "model.num_experts = 256 is not divisible by backend.megatron.expert_parallel = 3" in out
    assert "#SBATCH" not in out and "torchrun" not in out  # such a job has no script


def test_397b_layout_on_128_gpus():
    text = layout(compose("cpt", ["model=qwen3_5_397b_a17b", "backend=megatron", "cluster=slurm_128xh100"]))
    assert "world 128 = TP 2 x PP 4 x CP 1 x DP 16" in text and "EP 32" in text


def _stub(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
    (bin_dir / name).chmod(0o755)


def test_preemption_checkpoints_then_requeues(tmp_path):
    """USR1 to the batch shell -> preempt file -> the 'trainer' saves and exits 0 -> requeue."""
    cfg = compose("cpt", [*ARGS, "run_name=pre"])
    script = render(cfg, "cpt", [*ARGS, "run_name=pre"], runs_dir=str(tmp_path / "runs"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    _stub(bin_dir, "scontrol", f'if [ "$1" = show ]; then echo node001; else echo "scontrol $*" >> {log}; fi')
    _stub(bin_dir, "srun", 'exec "${@:3}"')  # drop srun's own two options
    # the trainer: polls the preempt file as lwm.train.preempt does, then "saves" and exits 0
    _stub(bin_dir, "torchrun", f'echo "torchrun $MASTER_ADDR:$MASTER_PORT $*" >> {log}\n'
          f'while [ ! -e "$LWM_PREEMPT_FILE" ]; do sleep 0.1; done\necho saved >> {log}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "node[001-002]"}
    proc = subprocess.Popen(["bash", "-c", script], env=env, cwd=tmp_path)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("torchrun node001:29500 --nnodes=1 --nproc-per-node=8 --rdzv-id=42")
    assert lines[1:] == ["saved", "scontrol requeue 42"]


def test_setup_runs_outside_set_u_and_env_values_are_quoted(tmp_path):
    """cluster.setup may read unset variables (conda activate, Lmod); cluster.env values are
    exported as written, one value each."""
    setup = '[ -z "$LWM_NEVER_SET" ] && echo setup-ran >> ' + str(tmp_path / "log")
    cfg = compose("cpt", [*ARGS, "run_name=env", f"cluster.setup=['{setup}']",
                          "cluster.env={EXTRA: a b $HOME, NCCL_DEBUG: INFO}"])
    script = render(cfg, "cpt", [*ARGS, "run_name=env"], runs_dir=str(tmp_path / "runs"))
    assert f"set +u\n{setup}\nset -u\n" in script
    assert "export EXTRA='a b $HOME'\nexport NCCL_DEBUG=INFO" in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", "echo node001")
    _stub(bin_dir, "srun", f'printf "%s|" "$EXTRA" "$NCCL_DEBUG" >> {tmp_path / "log"}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node001"}
    env.pop("LWM_NEVER_SET", None)
    assert subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, timeout=20).returncode == 0
    assert (tmp_path / "log").read_text() == "setup-ran\na b $HOME|INFO|"


def test_env_names_must_be_shell_variables():
    from lwm.cluster import env_exports
    cfg = compose("cpt", ["cluster.env={BAD-NAME: x}"])
    with pytest.raises(ValueError, match="'BAD-NAME' is not a shell variable name"):
        env_exports(cfg.cluster)
