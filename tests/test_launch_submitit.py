"""-m sweeps through Hydra's submitit launcher (cluster=slurm) with stand-in Slurm commands: the
job-array script submitit writes (setup and env lines included), the pickled jobs (one per override
set) run as Slurm would run them, the requeue after a preemption, the process group a task derives
from its Slurm variables; every job's layout checked before anything is submitted, the `-m --dry-run`
and `cluster.wait=false`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lwm.train import dist as pdist

ROOT = Path(__file__).resolve().parent.parent


def _stub(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
    (bin_dir / name).chmod(0o755)


def _slurm_env(tmp: Path) -> dict:
    """Stand-in Slurm commands first on PATH: sbatch records each call and its script."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "sbatch", f'echo "$*" >> {tmp}/sbatch.log\ncp "$1" {tmp}/job.sh\necho "Submitted batch job 1234"')
    _stub(bin_dir, "srun", "exit 0")  # submitit asks for srun on PATH; never called here
    _stub(bin_dir, "sacct", 'echo "JobID|State|NodeList"')  # "not known yet": submitit keeps waiting
    _stub(bin_dir, "scontrol", f'echo "scontrol $*" >> {tmp}/scontrol.log')
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def _lwm(tmp: Path, env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=timeout)


SETUP = ["module load cuda/12.4", "conda activate lwm"]
MEGATRON = ["model=qwen3_5_35b_a3b", "backend=megatron"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`lwm cpt -m cluster=slurm cpt.lr=1e-3,2e-3`: sbatch only records; nothing trains."""
    tmp = tmp_path_factory.mktemp("submitit")
    env = _slurm_env(tmp)
    sweep_dir = tmp / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "cpt", "-m", "cluster=slurm", "cluster.nodes=2",
         "cluster.partition=gpu", "cluster.signal_seconds=300", "run_name=sw", "cpt.lr=1e-3,2e-3",
         f"cluster.setup=[{','.join(SETUP)}]", "cluster.env={NCCL_DEBUG: INFO, EXTRA: a b $HOME}",
         f"hydra.sweep.dir={sweep_dir}"], cwd=tmp, env=env, stdout=open(tmp / "out.txt", "w"),
        stderr=subprocess.STDOUT)
    pickles = [sweep_dir / ".submitit" / f"1234_{i}" / f"1234_{i}_submitted.pkl" for i in (0, 1)]
    deadline = time.time() + 60
    # Submitted: the launcher now waits for the jobs' results, which only a real cluster gives.
    while not all(p.exists() for p in pickles) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)
    assert all(p.exists() for p in pickles), (tmp / "out.txt").read_text()[-3000:]
    return tmp, env, sweep_dir


def test_sweep_is_one_job_array_with_a_task_per_gpu(sweep):
    tmp, _, sweep_dir = sweep
    script = (tmp / "job.sh").read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=12", "#SBATCH --time=240",
                 "#SBATCH --partition=gpu", "#SBATCH --job-name=lwm-cpt-sw", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@300", "#SBATCH --mem=0", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out",
                 "export SUBMITIT_EXECUTOR=slurm",
                 f"-m submitit.core._submit {sweep_dir}/.submitit/%j"):
        assert line in script, line
    assert "--account" not in script and "--qos" not in script  # unset options stay out
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # the default waits, as Hydra's launcher does, and says how to watch meanwhile
    out = (tmp / "out.txt").read_text()
    assert "Submitted 2 job(s) as Slurm job 1234: 1234_0 .. 1234_1" in out and "squeue -j 1234" in out
    assert "Waiting for every job to end" in out


def test_array_script_runs_setup_and_quoted_env_before_srun(sweep):
    tmp, _, _ = sweep
    script = (tmp / "job.sh").read_text()
    exports = ["export NCCL_DEBUG=INFO", "export EXTRA='a b $HOME'"]
    block = "\n".join(["# setup", *SETUP, *exports]) + "\n"
    assert block in script and script.index(block) < script.index("\nsrun ")
    assert "set -u" not in script and "set -euo" not in script  # conda/Lmod run as in a login shell
    got = subprocess.run(["bash", "-c", "\n".join(exports) + '\nprintf %s "$EXTRA"'],
                         capture_output=True, text=True).stdout
    assert got == "a b $HOME"  # one value, exported as written


def test_each_array_task_pickles_its_overrides(sweep):
    from submitit.core.utils import DelayedSubmission
    _, _, sweep_dir = sweep
    for i, lr in ((0, "cpt.lr=0.001"), (1, "cpt.lr=0.002")):  # as Hydra's sweeper renders them
        job = DelayedSubmission.load(sweep_dir / ".submitit" / f"1234_{i}" / f"1234_{i}_submitted.pkl")
        overrides, _, job_num = job.args[:3]
        assert lr in overrides and "cluster=slurm" in overrides and job_num == i
        assert job.function.task_function.__name__ == "_hydra_entry"  # launch.cli's Hydra entry


def test_bad_layout_in_one_job_refuses_the_sweep_before_sbatch(tmp_path):
    env = _slurm_env(tmp_path)
    proc = _lwm(tmp_path, env, "cpt", "-m", "cluster=slurm", *MEGATRON, "backend.megatron.expert_parallel=4,3",
                "run_name=bad", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert not (tmp_path / "sbatch.log").exists() and not (tmp_path / "sweep" / ".submitit").exists()
    err = proc.stderr
    assert "sweep refused, nothing submitted: 1 of 2 job(s) cannot run" in err
    assert "job #1:" in err and "backend.megatron.expert_parallel=3" in err and "job #0" not in err
    assert "model.num_experts = 256 is not divisible by backend.megatron.expert_parallel = 3" in err


def test_dry_run_sweep_prints_each_layout_and_the_array_script(tmp_path):
    env = _slurm_env(tmp_path)
    sweep_dir = tmp_path / "sweep"
    args = ["cpt", "-m", "cluster=slurm", *MEGATRON, "run_name=dry", f"hydra.sweep.dir={sweep_dir}",
            f"cluster.setup=[{','.join(SETUP)}]", "cluster.env={EXTRA: a b}", "--dry-run"]
    proc = _lwm(tmp_path, env, *args, "backend.megatron.expert_parallel=4,8")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "# job #0: " in out and "backend.megatron.expert_parallel=4" in out and "# job #1: " in out
    assert "EP 4 x ETP 1 x expert-DP 2" in out and "EP 8 x ETP 1 x expert-DP 1" in out
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --ntasks-per-node=8", "#SBATCH --job-name=lwm-cpt-dry",
                 f"#SBATCH --output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out",
                 *SETUP, "export EXTRA='a b'", f"-m submitit.core._submit {sweep_dir}/.submitit/%j"):
        assert line in out, line
    assert not (tmp_path / "sbatch.log").exists() and not sweep_dir.exists()  # nothing submitted or written
    # one invalid job: its error, no script, exit 1
    proc = _lwm(tmp_path, env, *args, "backend.megatron.expert_parallel=4,3")
    assert proc.returncode == 1 and "#!/bin/bash" not in proc.stdout and "#SBATCH" not in proc.stdout
    assert "INVALID parallel layout: model.num_experts = 256" in proc.stdout
    assert "job #1:" in proc.stderr and "sweep refused" in proc.stderr
    assert not (tmp_path / "sbatch.log").exists()


def test_no_wait_returns_with_the_job_ids(tmp_path):
    """cluster.wait=false: submitted, ids and how to watch printed, no waiting (sacct never knows)."""
    env = _slurm_env(tmp_path)
    sweep_dir = tmp_path / "sweep"
    proc = _lwm(tmp_path, env, "cpt", "-m", "cluster=slurm", "cluster.wait=false", "run_name=nw",
                "cpt.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep_dir}", timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "Submitted 2 job(s) as Slurm job 1234: 1234_0 .. 1234_1" in out
    assert "squeue -j 1234" in out and f"{sweep_dir}/.submitit/" in out and "Not waiting" in out
    assert len((tmp_path / "sbatch.log").read_text().splitlines()) == 1  # one array
    assert all((sweep_dir / ".submitit" / f"1234_{i}" / f"1234_{i}_submitted.pkl").exists() for i in (0, 1))


JOB = """
import json, sys
import launch.stages
def fake_cpt(cfg, paths):  # stands in for the trainer: report what the job composed
    print(json.dumps({"lr": cfg.cpt.lr, "run_dir": cfg.run_dir, "stage": cfg.stage}), file=open(sys.argv[2], "w"))
    return {"steps": 3, "preempted": sys.argv[3] == "preempted"}
launch.stages._stage_fn = lambda name: fake_cpt
launch.stages.upstream.check = lambda *args: None  # the fake trainer reads no prepared data
from submitit.core.submission import process_job
process_job(sys.argv[1])
"""


@pytest.mark.parametrize("outcome", ["done", "preempted"])
def test_array_task_runs_lwm_and_requeues_when_preempted(sweep, outcome):
    """Array task 1 as Slurm starts it (one task here): its own overrides and run dir; after a
    preemption rank 0 requeues `1234_1` and leaves no result, so the rerun is awaited."""
    tmp, env, sweep_dir = sweep
    report = tmp / f"report_{outcome}.json"
    (tmp / "scontrol.log").unlink(missing_ok=True)
    job_env = {**env, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1236", "SLURM_ARRAY_JOB_ID": "1234",
               "SLURM_ARRAY_TASK_ID": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
               "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu001"}
    proc = subprocess.run([sys.executable, "-c", JOB, f"{sweep_dir}/.submitit/%j", str(report), outcome],
                          cwd=tmp, env=job_env, capture_output=True, text=True, timeout=120)
    got = json.loads(report.read_text())
    assert got == {"lr": 2e-3, "run_dir": str(sweep_dir / "job1"), "stage": "cpt"}, proc.stderr[-2000:]
    result = sweep_dir / ".submitit" / "1234_1" / "1234_1_0_result.pkl"
    if outcome == "done":
        assert proc.returncode == 0 and result.exists(), proc.stderr[-2000:]
        result.unlink()
    else:
        assert proc.returncode != 0 and not result.exists()
        assert (tmp / "scontrol.log").read_text().splitlines() == ["scontrol requeue 1234_1"]


SLURM_TASK = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "777", "SLURM_NTASKS": "16",
              "SLURM_JOB_NUM_NODES": "2", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
              "SLURM_JOB_NODELIST": "gpu[003-004]"}
TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


@pytest.fixture
def slurm_task(monkeypatch):
    # what pdist.init() writes into os.environ is put back by conftest's autouse fixture
    for k in TORCH_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in SLURM_TASK.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def test_submitit_task_derives_torch_env(slurm_task):
    env = pdist.submitit_env()
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == \
        {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu003"}
    assert 20000 <= int(env["MASTER_PORT"]) <= 60000 and env == pdist.submitit_env()  # same on every task
    slurm_task.setenv("MASTER_PORT", "29511")
    assert pdist.submitit_env()["MASTER_PORT"] == "29511"


@pytest.mark.parametrize("change", [("WORLD_SIZE", "16"), ("SLURM_NTASKS", "1"), ("SUBMITIT_EXECUTOR", None)])
def test_no_derivation_under_torchrun_one_task_or_outside_submitit(slurm_task, change):
    key, value = change
    if value is None:
        slurm_task.delenv(key)
    else:
        slurm_task.setenv(key, value)
    assert pdist.submitit_env() == {}


def test_init_joins_the_derived_group(slurm_task):
    """init() exports the derived variables before init_process_group reads them (env://)."""
    calls = []
    slurm_task.setattr(pdist.dist, "is_initialized", lambda: False)
    slurm_task.setattr(pdist.dist, "init_process_group",
                       lambda backend: calls.append((backend, os.environ["RANK"], os.environ["WORLD_SIZE"])))
    slurm_task.setattr(pdist.dist, "get_rank", lambda: int(os.environ["RANK"]))
    slurm_task.setattr(pdist.dist, "get_world_size", lambda: int(os.environ["WORLD_SIZE"]))
    slurm_task.setattr(pdist.torch.cuda, "is_available", lambda: False)
    assert pdist.init() == (9, 16) and calls == [("gloo", "9", "16")]
    assert os.environ["MASTER_ADDR"] == "gpu003" and os.environ["LOCAL_RANK"] == "1"


def test_init_one_task_job_stays_world_one(slurm_task):
    slurm_task.setenv("SLURM_NTASKS", "1")
    assert pdist.init() == (0, 1) and "WORLD_SIZE" not in os.environ


def test_submitit_signal_asks_the_trainer_to_save(monkeypatch):
    """In a submitit job the preemption signal (USR2) sets the same flag as the batch script's USR1,
    instead of submitit's handler requeueing before anything is saved."""
    import signal

    from lwm.train import preempt
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.delenv("LWM_PREEMPT_FILE", raising=False)
    monkeypatch.setattr(preempt, "_signalled", False)
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        preempt.install()
        assert not preempt.requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert preempt.requested()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
