"""bench/gpu_check.sh --cpu: the one GPU check's rows, at tiny sizes on the CPU through the code
they run on the GPU, so the check is ready whenever a GPU is; and what it carries there covers
what the project imports."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["setup", "numerics_cpt", "numerics_sft", "throughput_hf", "throughput_deepspeed", "throughput_megatron",
        "throughput_megatron_te", "conversion", "rl"]


def test_cpu_mode_fills_every_row_and_matches_the_reference(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", "--out", str(out), "--work", str(tmp_path / "work")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    table = json.loads((out / "gpu_check.json").read_text())
    rows = {r["row"]: r for r in table["rows"]}
    assert list(rows) == ROWS
    bad = {k: r.get("error") or r.get("summary") for k, r in rows.items()
           if r["status"] not in ("ok", "pass", "not run")}
    assert not bad, (bad, res.stdout[-3000:])
    assert res.returncode == 0, res.stdout[-3000:]
    for key in ("numerics_cpt", "numerics_sft"):
        m = rows[key]["metrics"]
        assert rows[key]["status"] == "pass" and m["max_rel_diff"] <= m["tolerance"] == 1e-4
        assert m["losses"][-1] < m["losses"][0] - 0.5  # it trained: the check compares learning, not ln(V)
    assert rows["numerics_sft"]["metrics"]["trained_tokens"] > 0
    for key in ("throughput_hf", "throughput_deepspeed", "throughput_megatron"):
        assert rows[key]["metrics"]["tokens_per_s"] > 0 and rows[key]["metrics"]["mfu"] > 0
    # every engine trains the same tiny model from the same seed on the same rows
    first = {rows[k]["metrics"]["losses"][0] for k in ("throughput_hf", "throughput_deepspeed")}
    assert len(first) == 1
    assert rows["throughput_megatron_te"]["status"] == "not run"
    assert rows["conversion"]["metrics"]["trained"]["rel"] < 1e-5
    rl = rows["rl"]["metrics"]
    assert rl["generation_s"] > 0 and rl["training_s"] > 0
    md = (out / "gpu_check.md").read_text()
    assert all(r["title"] in md for r in table["rows"])
    assert (out / "log.txt").exists()


def test_the_carried_wheels_cover_what_the_checked_code_imports():
    """A module the check's code imports that the GPU machine lacks must be in bench/gpu_wheels.sh
    (the machine's packages: its ON_MACHINE list and KINDS.md)."""
    script = (ROOT / "bench" / "gpu_wheels.sh").read_text()
    block = re.search(r"WHEELS=\((.*?)\n\)", script, re.S).group(1)
    carried = {_norm(m.group(1)) for m in re.finditer(r"([A-Za-z0-9_.-]+)==", block + " ".join(
        re.search(r"SDISTS=\((.*?)\)", script).group(1).split()))}
    machine = set(re.search(r'ON_MACHINE = set\("""(.*?)"""', script, re.S).group(1).split())
    # import name -> distribution where they differ; None: imported only where the check never goes
    # (Transformer Engine when installed, Slurm tasks, wandb when not disabled, chat endpoints)
    dist = {"hydra": "hydra-core", "megatron": "megatron-core", "yaml": "pyyaml", "transformer_engine": None,
            "submitit": None, "wandb": None, "openai": None}
    # the GPU rows' code: the library and the stages they run (lazy imports included), and the check
    files = [p for d in ("lwm", "pretrain", "sft", "rl") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "bench" / "gpu_check.py", ROOT / "bench" / "bench_backends.py", ROOT / "launch" / "__init__.py"]
    local = {"lwm", "pretrain", "sft", "rl", "launch", "bench_backends", "data_pipeline", "eval", "serve"}
    missing = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                d = dist.get(top, _norm(top))
                if d is not None and d not in carried and d not in machine:
                    missing.setdefault(d, str(f.relative_to(ROOT)))
    assert not missing, f"imported by the GPU check's code, neither carried nor on the GPU machine: {missing}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
