"""Scripted research tasks for the search domain: search, read, take notes, search again.

Each task draws its subject (a Debian package, a Python module, a manual page) and its wording
from random.Random(f"{seed}:{index}"); the subjects are ones every Debian machine with the
index's sources has, so the URLs the scripts open are real pages of the index. Every task makes
at least one call that fails (no hits, a dead link, a missing key, a bad argument), because a
world model must predict errors as well as results.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from data_pipeline.collect.base import ScriptedTask

SUITE = "bookworm"
PACKAGES = {
    "ripgrep": "recursive regex search tool", "jq": "command-line JSON processor",
    "curl": "transfer data from URLs", "nginx": "small powerful scalable web server",
    "sqlite3": "command line interface for SQLite", "tmux": "terminal multiplexer",
    "htop": "interactive processes viewer", "git": "distributed version control system",
    "rsync": "fast remote file copy program", "ffmpeg": "audio video converter",
    "pandoc": "universal markup converter", "imagemagick": "image manipulation programs",
    "postgresql": "object-relational SQL database", "redis-server": "persistent key-value database",
    "graphviz": "graph drawing tools", "gnuplot": "command-line plotting program",
    "vim": "Vi IMproved text editor", "zstd": "fast lossless compression",
    "borgbackup": "deduplicating and compressing backup", "fzf": "general-purpose fuzzy finder",
    "shellcheck": "lint tool for shell scripts", "hugo": "fast static website generator",
    "restic": "backup program with deduplication", "bubblewrap": "unprivileged sandboxing tool",
    "mosquitto": "MQTT message broker", "nmap": "network port scanner",
    "tesseract-ocr": "optical character recognition engine", "inkscape": "vector graphics editor",
    "gimp": "GNU Image Manipulation Program", "wireguard-tools": "fast modern secure VPN tools",
}
MODULES = {
    "json": "dumps", "heapq": "heappush", "itertools": "groupby", "collections": "Counter",
    "pathlib": "glob", "functools": "lru_cache", "asyncio": "gather", "sqlite3": "connect",
    "argparse": "add_argument", "datetime": "strftime", "re": "findall", "subprocess": "run",
    "logging": "basicConfig", "csv": "DictReader", "dataclasses": "field", "textwrap": "dedent",
    "bisect": "insort", "shutil": "copytree", "hashlib": "sha256", "unittest": "assertEqual",
}
MAN_PAGES = {"tar": "create an archive", "grep": "print lines matching a pattern",
             "sed": "stream editor", "find": "search for files", "ls": "list directory contents",
             "sort": "sort lines of text", "chmod": "change file mode bits",
             "gzip": "compress files", "date": "print the system date", "xargs": "build command lines"}
NONSENSE = ("qzxvbnm", "flurbotronic", "zzyzxq", "wqpxlrtv", "glarbnix", "xxkqjvz")


def call(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def search(query, **kw) -> str:
    return call("web_search", query=query, **kw)


def extract(url: str) -> str:
    return call("web_extractor", url=url)


def memory(operation: str, key: str | None = None, value: str | None = None) -> str:
    args = {"operation": operation}
    if key is not None:
        args["key"] = key
    if value is not None:
        args["value"] = value
    return call("dict_memory", **args)


def pkg_url(name: str) -> str:
    return f"https://packages.debian.org/{SUITE}/{name}"


def doc_url(module: str) -> str:
    return f"https://docs.python.org/3/library/{module}.html"


def man_url(page: str) -> str:
    return f"https://manpages.debian.org/{SUITE}/{page}.1"


def package_research(rng):
    pkg = rng.choice(list(PACKAGES))
    topic = PACKAGES[pkg]
    return (f"Find a Debian package that is a {topic}, note what it does and its homepage, then "
            "look for related packages.",
            [search(topic), extract(pkg_url(pkg)), memory("add", pkg, f"{topic}; see {pkg_url(pkg)}"),
             search(f"{pkg} plugin OR extension OR frontend", top_k=rng.choice([3, 5])),
             memory("retrieve", f"{pkg}-homepage"), memory("retrieve")],
            {"package": pkg})


def python_module(rng):
    mod = rng.choice(list(MODULES))
    fn = MODULES[mod]
    return (f"How is {mod}.{fn} used in Python? Read the module's documentation and keep a note.",
            [search(f"python {mod} module {fn}"), extract(doc_url(mod)),
             memory("add", f"{mod}.{fn}", f"documented at {doc_url(mod)}"),
             search(f"{fn} example"), extract(doc_url(mod).replace(".html", "-module.html"))],
            {"module": mod, "function": fn})


def batched_compare(rng):
    pkgs = rng.sample(list(PACKAGES), 3)
    return (f"Compare the Debian packages {', '.join(pkgs)}: what each one is for.",
            [search([f"{p} {PACKAGES[p]}" for p in pkgs], top_k=3),
             extract(pkg_url(pkgs[0])), memory("add", pkgs[0], PACKAGES[pkgs[0]]),
             extract(pkg_url(pkgs[1])), memory("add", pkgs[1], PACKAGES[pkgs[1]]),
             memory("add", pkgs[0], "duplicate"), memory("retrieve")],
            {"packages": pkgs})


def no_results(rng):
    word, pkg = rng.choice(NONSENSE), rng.choice(list(PACKAGES))
    return (f"Search for the term '{word}'; if nothing turns up, research the {pkg} package instead.",
            [search(word), search(f'"{word} {rng.choice(NONSENSE)}"'), search(f"{pkg} {PACKAGES[pkg]}"),
             extract(pkg_url(pkg)), memory("add", "fallback", pkg)],
            {"word": word, "package": pkg})


def dead_link(rng):
    pkg = rng.choice(list(PACKAGES))
    bad = rng.choice([pkg_url(pkg + "-ng"), f"https://www.{pkg}.example.org/docs",
                      f"packages.debian.org/{pkg}", pkg_url(pkg).replace(SUITE, "buster")])
    return (f"Open the page of the {pkg} package, recovering if the first link is dead.",
            [extract(bad), search(f"{pkg} debian package"), extract(pkg_url(pkg)),
             memory("add", "page", pkg_url(pkg))],
            {"package": pkg, "bad_url": bad})


def notes_bookkeeping(rng):
    mods = rng.sample(list(MODULES), 2)
    key = f"{mods[0]}-summary"
    return (f"Keep notes on the Python modules {mods[0]} and {mods[1]} and tidy them up.",
            [memory("retrieve", key), search(f"{mods[0]} {MODULES[mods[0]]}"),
             memory("add", key, f"{mods[0]} provides {MODULES[mods[0]]}"),
             memory("update", key, f"{mods[0]}.{MODULES[mods[0]]}: see {doc_url(mods[0])}"),
             memory("add", f"{mods[1]}-summary", f"{mods[1]} provides {MODULES[mods[1]]}"),
             memory("remove", f"{mods[1]}-summary"), memory("retrieve", f"{mods[1]}-summary"),
             memory("retrieve")],
            {"modules": mods})


def man_lookup(rng):
    cmd = rng.choice(list(MAN_PAGES))
    return (f"Find the manual page of the command that can {MAN_PAGES[cmd]} and read its options.",
            [search(f"{MAN_PAGES[cmd]} command manual"), extract(man_url(cmd)),
             memory("add", f"{cmd}-man", man_url(cmd)), extract(man_url(cmd).replace(".1", ".9")),
             search(f"{cmd} options", top_k=2)],
            {"command": cmd})


def multi_hop(rng):
    pkg = rng.choice(list(PACKAGES))
    mod = rng.choice(list(MODULES))
    return (f"Find whether {pkg} can be scripted from Python, then read the docs of the Python "
            f"module {mod} that a script would use.",
            [search(f"python3 {pkg} bindings"), search(f"python3-{pkg}"), extract(pkg_url(f"python3-{pkg}")),
             extract(pkg_url(pkg)), search(f"python {mod}"), extract(doc_url(mod)[:-len(".html")]),
             extract(doc_url(mod)),
             memory("add", "plan", f"drive {pkg} from Python via {mod}")],
            {"package": pkg, "module": mod})


def bad_arguments(rng):
    pkg = rng.choice(list(PACKAGES))
    return (f"Search for the {pkg} package with 10 results, then save it.",
            [search(f"{pkg}", top_k=rng.choice([0, 50])), search("   "), search(pkg, top_k=10),
             call("dict_memory", operation=rng.choice(["append", "get"]), key=pkg),
             memory("add", pkg), memory("add", pkg, PACKAGES[pkg]), memory("retrieve", pkg)],
            {"package": pkg})


TASKS: dict[str, Callable] = {f.__name__: f for f in (
    package_research, python_module, batched_compare, no_results, dead_link, notes_bookkeeping,
    man_lookup, multi_hop, bad_arguments)}


def make_task(index: int, seed: int) -> ScriptedTask:
    """Task `index` cycles through the library; its parameters come from (seed, index)."""
    name = list(TASKS)[index % len(TASKS)]
    rng = random.Random(f"{seed}:{index}")
    instruction, actions, params = TASKS[name](rng)
    return ScriptedTask(name, instruction, actions, params)
