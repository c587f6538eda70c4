"""The three floors hold: the library (`lwm/`) imports no stage, a stage imports the library and
itself only, and the launcher (`launch/`) alone knows every stage. Imports inside functions
count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY, LAUNCHER = "lwm", "launch"
STAGES = ("data_pipeline", "pretrain", "sft", "rl", "eval", "serve")
PACKAGES = (LIBRARY, LAUNCHER, *STAGES)


def imports(path: Path, module: str) -> set[str]:
    """Top-level packages of this project that `module` (at `path`) imports."""
    found = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


def violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for target in imports(path, module) - {package}:
                if package == LAUNCHER or target == LIBRARY:
                    continue  # the launcher may import anything; everyone may import the library
                bad.append(f"{module} imports {target}")
    return bad


def test_no_import_crosses_a_floor():
    assert violations() == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from sft.train import train\n    from . import sibling\n")
    assert imports(f, "rl.mod") == {"sft", "rl"}
