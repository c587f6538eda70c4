"""Scripted swe tasks over real packages: explore, search, test, break and fix, write, commit.

The repositories are source distributions of small pure-Python packages with their test suites.
Tasks pick a package, one of its modules and a public function that its tests exercise, read
from the sdist itself (so every `replace` targets text that really is in the file), with all
choices drawn from random.Random(f"{seed}:{index}"). Every task has at least one failing call.
"""

from __future__ import annotations

import ast
import functools
import json
import random
import tarfile
from pathlib import Path
from typing import Callable

from data_pipeline.collect.base import ScriptedTask

# package -> sdist, import name, and {module: its test file}, paths relative to the repo root
PACKAGES = {
    "six": {"dir": "six-1.17.0", "pin": "six==1.17.0", "modules": {"six.py": "test_six.py"}},
    "toolz": {"dir": "toolz-1.0.0", "pin": "toolz==1.0.0", "modules": {
        "toolz/itertoolz.py": "toolz/tests/test_itertoolz.py",
        "toolz/functoolz.py": "toolz/tests/test_functoolz.py",
        "toolz/dicttoolz.py": "toolz/tests/test_dicttoolz.py"}},
    "more-itertools": {"dir": "more-itertools-10.5.0", "pin": "more-itertools==10.5.0", "modules": {
        "more_itertools/recipes.py": "tests/test_recipes.py",
        "more_itertools/more.py": "tests/test_more.py"}},
}
DOWNLOAD = ("pip download --no-binary :all: --no-deps "
            + " ".join(p["pin"] for p in PACKAGES.values()) + " -d {dir}")
WORDS = ("amber", "cedar", "delta", "ember", "falcon", "harbor", "lantern", "maple", "orbit",
         "quartz", "saturn", "thistle", "willow", "zephyr", "copper", "meadow")
# A line of real usage per package, for scripts the agent writes
USAGE = {"six": ("import six", "six.ensure_str(b'{w}')", "'{w}'"),
         "toolz": ("import toolz", "toolz.frequencies('{w}')['{c}']", "{n}"),
         "more-itertools": ("import more_itertools", "len(list(more_itertools.chunked('{w}', 2)))",
                            "{k}")}


def sdist_path(sdist_dir: str | Path, package: str) -> Path:
    return Path(sdist_dir).expanduser() / f"{PACKAGES[package]['dir']}.tar.gz"


def require_sdists(sdist_dir: str | Path) -> Path:
    """The sdist cache, or a FileNotFoundError naming the command that fills it."""
    missing = [p for p in PACKAGES if not sdist_path(sdist_dir, p).is_file()]
    if missing:
        path = Path(sdist_dir).expanduser()
        raise FileNotFoundError(
            f"swe collector: source distributions of {', '.join(missing)} are missing from {path}. "
            f"Fetch them once (network needed) with: {DOWNLOAD.format(dir=path)}")
    return Path(sdist_dir).expanduser()


@functools.lru_cache(maxsize=64)
def _member(sdist_dir: str, package: str, path: str) -> str:
    with tarfile.open(sdist_path(sdist_dir, package)) as tar:
        return tar.extractfile(f"{PACKAGES[package]['dir']}/{path}").read().decode()


@functools.lru_cache(maxsize=16)
def _targets(sdist_dir: str, package: str, module: str) -> list[dict]:
    """Public top-level functions the tests mention, with a first body line unique in the file."""
    src = _member(sdist_dir, package, module)
    tests = _member(sdist_dir, package, PACKAGES[package]["modules"][module])
    lines, out = src.splitlines(), []
    for node in ast.parse(src).body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.name not in tests:
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        if not body:
            continue
        first = lines[body[0].lineno - 1]
        if src.count(first + "\n") == 1 and not first.rstrip().endswith("\\"):
            out.append({"name": node.name, "line": node.lineno, "first": first})
    return out


def call(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def sh(command: str) -> str:
    return call("run_shell_command", command=command)


class _Ctx:
    """A task's draw: package, module, its test file and a target function."""

    def __init__(self, rng: random.Random, sdist_dir: str):
        self.rng, self.sdist_dir = rng, sdist_dir
        self.package = rng.choice(list(PACKAGES))
        self.module = rng.choice(list(PACKAGES[self.package]["modules"]))
        self.test = PACKAGES[self.package]["modules"][self.module]
        self.fn = rng.choice(_targets(sdist_dir, self.package, self.module))
        self.dotted = self.module[:-3].replace("/", ".")
        self.word = rng.choice(WORDS)

    def params(self, **extra) -> dict:
        return {"package": self.package, "module": self.module, "function": self.fn["name"], **extra}

    def pytest(self, k: str | None = None) -> str:
        return sh(f"python3 -m pytest -q -x -p no:cacheprovider {self.test}" + (f" -k {k}" if k else ""))


def explore_module(c: _Ctx):
    pkg_dir = c.module.rsplit("/", 1)[0] if "/" in c.module else "."
    return (f"Find where {c.fn['name']} is defined in {c.package} and read its implementation.",
            [call("list_directory", path="."), call("list_directory", path=pkg_dir),
             call("search_file_content", pattern=rf"def {c.fn['name']}\b", include="*.py"),
             call("read_file", path=c.module, offset=c.fn["line"] - 1, limit=c.rng.randint(10, 25)),
             call("read_file", path=f"{c.word}_{c.fn['name']}.py")],
            c.params())


def run_tests(c: _Ctx):
    return (f"Run the tests of {c.fn['name']} in {c.test}, then check the repository is clean.",
            [c.pytest(c.fn["name"]), sh("git status --short && echo clean"),
             sh(f"python3 -m pytest -q -p no:cacheprovider {c.test}::test_{c.word}_missing"),
             sh(f"python3 -c 'import {c.word}_helpers'")],
            c.params())


def break_and_fix(c: _Ctx):
    first = c.fn["first"]
    indent = first[: len(first) - len(first.lstrip())]
    bug = f'{indent}raise RuntimeError("{c.word}: injected bug")\n{first}'
    return (f"Inject a bug into {c.fn['name']}, watch its tests fail, then revert the change.",
            [call("read_file", path=c.module, offset=c.fn["line"] - 1, limit=12),
             call("replace", path=c.module, old_string=first, new_string=bug),
             c.pytest(c.fn["name"]), sh(f"git diff --stat && git diff {c.module} | head -20"),
             call("replace", path=c.module, old_string=bug, new_string=first),
             c.pytest(c.fn["name"]), sh("git status --short | wc -l")],
            c.params(word=c.word))


def replace_errors(c: _Ctx):
    first = c.fn["first"]
    return (f"Annotate the first statement of {c.fn['name']} with a review comment.",
            [call("replace", path=c.module, old_string=first.strip() + f"  # {c.word}", new_string="x"),
             call("replace", path=c.module, old_string="return ", new_string="return  "),
             call("replace", path=c.module, old_string=first, new_string=f"{first}  # reviewed: {c.word}"),
             sh(f"python3 -c 'import {c.dotted}; print(\"import ok\")'"),
             sh("git diff --stat")],
            c.params(word=c.word))


def new_script(c: _Ctx):
    imp, expr, _ = USAGE[c.package]
    w = c.word
    expected = {"six": repr(w), "toolz": str(w.count(w[0])), "more-itertools": str((len(w) + 1) // 2)}
    expr = expr.format(w=w, c=w[0])
    script = f"scratch/{w}_demo.py"
    test = f"scratch/test_{w}.py"
    return (f"Write a small script and a test using {c.package}, run both and list the results.",
            [call("write_file", path=script, content=f"{imp}\n\nprint({expr})\n"),
             sh(f"python3 {script}"),
             call("write_file", path=test, content=(
                 f"{imp}\n\n\ndef test_ok():\n    assert repr({expr}) == {expected[c.package]!r}\n\n\n"
                 f"def test_wrong():\n    assert {expr} == {c.rng.randint(100, 999)}\n")),
             sh(f"python3 -m pytest -q -p no:cacheprovider {test}"),
             call("list_directory", path="scratch"), call("list_directory", path=f"scratch/{w}")],
            c.params(word=w))


def search_code(c: _Ctx):
    prefix = c.fn["name"][:3]
    return (f"Survey {c.module}: functions starting with '{prefix}', imports, and a missing name.",
            [call("search_file_content", pattern=rf"^def {prefix}", path=c.module),
             call("search_file_content", pattern=r"^(import|from) ", path=c.module),
             call("search_file_content", pattern=f"{c.word}_{c.rng.randint(10, 99)}", include="*.py"),
             call("search_file_content", pattern=f"({c.fn['name']}"),
             call("search_file_content", pattern=c.fn["name"], path=c.test)],
            c.params())


def git_history(c: _Ctx):
    note = f"NOTES_{c.word}.md"
    return ("Add a notes file, commit it and inspect the history.",
            [sh("git log --oneline"), call("write_file", path=note, content=f"# {c.word}\n\nReviewed "
                                           f"{c.fn['name']} in {c.module}.\n"),
             sh(f"git add {note} && git commit -q -m 'Add {c.word} notes' && git log --oneline"),
             sh("git show --stat HEAD | tail -3"), sh(f"git checkout {c.word}-branch")],
            c.params(word=c.word))


def sandbox_limits(c: _Ctx):
    return ("Check what the workspace can reach: files outside the repository and the network.",
            [call("read_file", path="/etc/passwd"), call("list_directory", path="../.."),
             sh("whoami; pwd; echo $HOME"), sh("ls /root /work 2>&1; ls / | head -20"),
             sh("python3 -c \"import urllib.request; urllib.request.urlopen('http://pypi.org', timeout=3)\" "
                "2>&1 | tail -1")],
            c.params())


def inspect_api(c: _Ctx):
    name = c.fn["name"]
    return (f"Inspect the signature and documentation of {c.dotted}.{name}.",
            [sh(f"python3 -c 'import inspect, {c.dotted} as m; print(inspect.signature(m.{name}))'"),
             sh(f"python3 -c 'import {c.dotted} as m; print(m.{name}.__doc__)' | head -15"),
             sh(f"wc -l {c.module} {c.test}"),
             call("read_file", path=c.module, offset=100000, limit=5),
             sh(f"python3 -c 'import {c.dotted} as m; m.{name}_{c.word}'")],
            c.params())


def edit_docs(c: _Ctx):
    readme = _member(c.sdist_dir, c.package, "README.rst")
    prose = [l for l in readme.splitlines() if len(l) > 30 and l[0].isalpha() and readme.count(l) == 1]
    line = c.rng.choice(prose)
    return (f"Edit the README of {c.package} and review the change.",
            [call("read_file", path="README.rst", limit=12),
             call("replace", path="README.rst", old_string=line, new_string=f"{line} ({c.word} fork)"),
             call("write_file", path=c.module.rsplit("/", 1)[0] if "/" in c.module else ".",
                  content="oops"),
             sh("git diff README.rst"), sh("git diff --stat")],
            c.params(word=c.word))


TASKS: dict[str, Callable[[_Ctx], tuple]] = {f.__name__: f for f in (
    explore_module, run_tests, break_and_fix, replace_errors, new_script, search_code,
    git_history, sandbox_limits, inspect_api, edit_docs)}


def make_task(index: int, seed: int, sdist_dir: str, name: str | None = None) -> ScriptedTask:
    """Task `index` of a run: types cycle in order, parameters come from (seed, index)."""
    require_sdists(sdist_dir)
    rng = random.Random(f"{seed}:{index}")
    name = name or list(TASKS)[index % len(TASKS)]
    instruction, actions, params = TASKS[name](_Ctx(rng, str(sdist_dir)))
    return ScriptedTask(name, instruction, actions, params)
