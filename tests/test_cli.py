"""The `lwm` command as a user meets it first: help that exits 0, a config that prints fully
resolved, and docs whose paths and commands exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "architecture.md"]
TOP = ("lwm/", "data_pipeline/", "pretrain/", "sft/", "rl/", "eval/", "serve/", "launch/", "configs/",
       "tests/", "bench/", "docs/", "scripts/", "slurm/", "examples/")


def lwm(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_lists_every_command(flag):
    from launch.stages import COMMANDS
    res = lwm(flag)
    assert res.returncode == 0, res.stderr
    assert all(f"\n  {name} " in res.stdout for name in COMMANDS)


def test_an_unknown_command_is_named():
    res = lwm("trian")
    assert res.returncode == 2 and "unknown command 'trian'" in res.stderr


def test_the_resolved_config_prints_every_value():
    res = lwm("cpt", "--cfg", "job", "--resolve", "run_name=printed")
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = yaml.safe_load(res.stdout)
    assert cfg["run_dir"] == "runs/printed" and cfg["stage"] == "cpt"
    assert "${" not in res.stdout and "???" not in res.stdout


def _doc_paths(text: str) -> set[str]:
    """Files of the repository the text names: code, configs and docs (folders and names like
    `eval/report.md` may be a run's outputs: stages and run folders share names)."""
    paths = set()
    for token in re.findall(r"[`\s(]((?:%s)[A-Za-z0-9_./*-]*)" % "|".join(map(re.escape, TOP)), text):
        token = token.rstrip(".,:;)")
        code = token.endswith((".py", ".sh", ".tmpl", ".toml")) or re.match(r"(configs/.*\.yaml|docs/.*\.md)$", token)
        if code and "*" not in token and "<" not in token:
            paths.add(token)
    return paths


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_and_module_the_docs_name_exists(doc):
    text = doc.read_text()
    missing = sorted(p for p in _doc_paths(text) if not (ROOT / p).exists())
    assert missing == [], f"{doc.name} names paths that do not exist: {missing}"
    modules = set(re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text)) - {"pytest"}
    sys.path.insert(0, str(ROOT))
    try:
        absent = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    finally:
        sys.path.remove(str(ROOT))
    assert absent == [], f"{doc.name} runs modules that do not exist: {absent}"
    assert "../" not in re.sub(r"```.*?```", "", text, flags=re.S), f"{doc.name} points outside the repository"
