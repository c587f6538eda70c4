"""The three floors hold: the library (`lwm/`) imports no stage, a stage imports the library and
itself only, and the launcher (`launch/`) alone knows every stage; and no two modules import
each other, directly or around a loop. Imports inside functions count too: a lazy import is
still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY, LAUNCHER = "lwm", "launch"
STAGES = ("data_pipeline", "pretrain", "sft", "rl", "eval", "serve")
PACKAGES = (LIBRARY, LAUNCHER, *STAGES)


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `module` (at `path`) imports: modules, and `module.name` for names
    taken from one (which may be submodules)."""
    found = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            found |= {source} | {f"{source}.{a.name}" for a in node.names}
    return found


def imports(path: Path, module: str) -> set[str]:
    """Top-level packages of this project that `module` (at `path`) imports."""
    return {n.split(".")[0] for n in imported_names(path, module) if n.split(".")[0] in PACKAGES}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (a name resolves to its longest module prefix)."""
    mods = modules()

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name
    return {m: {t for t in map(resolve, imported_names(p, m)) if t and t != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
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


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from sft.train import train\n    from . import sibling\n")
    assert imports(f, "rl.mod") == {"sft", "rl"}
