"""Scripted shell tasks: realistic multi-step sessions with randomised parameters.

Each task is a function of a seeded random.Random returning the instruction and the actions
(Terminal-Bench keystroke lists), so every trajectory differs in names, numbers and words while
staying reproducible from (seed, index). They cover what a terminal world model must predict:
file contents, pipelines, errors and exit codes, tracebacks, git, environment, directories,
partial output of long commands, archives and in-place edits.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from data_pipeline.collect.base import ScriptedTask

WORDS = ("apple", "river", "stone", "cloud", "maple", "tiger", "ember", "delta", "orbit", "pixel",
         "lunar", "cedar", "frost", "harbor", "violet", "copper", "meadow", "falcon", "quartz",
         "willow", "signal", "canyon", "breeze", "saturn", "pepper", "glacier", "lantern", "nectar",
         "summit", "thistle", "velvet", "zephyr", "amber", "bison", "coral", "dune", "fern", "grove")
EXTS = ("txt", "log", "csv", "md", "json", "py")


def keys(*batches: tuple[str, float] | str, duration: float = 0.1) -> str:
    """One action: strings are typed then Enter; (text, seconds) tuples are sent as given."""
    out = []
    for b in batches:
        text, wait = (b[0], b[1]) if isinstance(b, tuple) else (b + "\n", duration)
        out.append({"keystrokes": text, "duration": wait})
    return json.dumps(out)


def _words(rng: random.Random, k: int) -> list[str]:
    return rng.sample(WORDS, k)


def notes_file(rng):
    d, f = rng.choice(WORDS) + "_notes", rng.choice(WORDS) + ".txt"
    lines = _words(rng, rng.randint(3, 6))
    return (f"Create a directory {d} with a file {f} listing {len(lines)} items, then show it "
            "numbered and count its lines.",
            [keys(f"mkdir {d} && cd {d}"), keys(f"printf '%s\\n' {' '.join(lines)} > {f}"),
             keys(f"cat -n {f}"), keys(f"wc -l {f}"), keys("ls -l")],
            {"dir": d, "file": f, "lines": lines})


def word_frequency(rng):
    vocab = _words(rng, 4)
    text = [rng.choice(vocab) for _ in range(rng.randint(8, 16))]
    f = rng.choice(WORDS) + ".txt"
    return (f"Count how often each word appears in {f} and report the most frequent one.",
            [keys(f"echo {' '.join(text)} | tr ' ' '\\n' > {f}"), keys(f"wc -w {f}"),
             keys(f"sort {f} | uniq -c | sort -rn"), keys(f"sort {f} | uniq | wc -l"),
             keys(f"sort {f} | uniq -c | sort -rn | head -1 | awk '{{print $2}}'")],
            {"file": f, "words": text})


def grep_log(rng):
    f = rng.choice(["app", "server", "worker", "cron"]) + ".log"
    n, errors = rng.randint(6, 12), rng.randint(1, 4)
    kind = rng.choice(["timeout", "refused", "disk full"])
    return (f"Generate a log {f} with {n} lines, some errors ({kind}), then find and count them.",
            [keys(f"for i in $(seq 1 {n}); do echo \"INFO request $i ok\"; done > {f}"),
             keys(f"for i in $(seq 1 {errors}); do echo \"ERROR request $i: {kind}\" >> {f}; done"),
             keys(f"grep -c ERROR {f}"), keys(f"grep -n '{kind}' {f}"),
             keys(f"grep -v INFO {f} | cut -d: -f2 | sort | uniq -c"), keys(f"tail -3 {f}")],
            {"file": f, "lines": n, "errors": errors, "kind": kind})


def awk_csv(rng):
    f = rng.choice(["sales", "scores", "inventory", "orders"]) + ".csv"
    rows = [(w, rng.randint(1, 99)) for w in _words(rng, rng.randint(4, 7))]
    threshold = rng.randint(20, 70)
    body = "\n".join(["name,value"] + [f"{w},{v}" for w, v in rows])
    return (f"Write {f} and use awk to total the values and list rows above {threshold}.",
            [keys((f"cat > {f} <<'EOF'\n{body}\nEOF\n", 0.1)), keys(f"head -3 {f}"),
             keys(f"awk -F, 'NR>1 {{s+=$2}} END {{print \"total:\", s}}' {f}"),
             keys(f"awk -F, 'NR>1 && $2>{threshold} {{print $1}}' {f}"),
             keys(f"tail -n +2 {f} | sort -t, -k2 -n | head -2")],
            {"file": f, "rows": rows, "threshold": threshold})


def missing_things(rng):
    f = rng.choice(WORDS) + "." + rng.choice(EXTS)
    typo = rng.choice(["pyhton3 --version", "gti status", "sl", "lss -l", "grpe foo bar.txt"])
    return (f"Try to read {f}, list a missing directory and run `{typo}`, checking each error.",
            [keys(f"cat {f}"), keys("echo \"exit status: $?\""), keys(f"ls {rng.choice(WORDS)}_dir"),
             keys(typo), keys("echo $?"), keys(f"touch {f} && cat {f} && echo \"now exists\"")],
            {"file": f, "typo": typo})


def python_script(rng):
    nums = [rng.randint(1, 50) for _ in range(rng.randint(3, 6))]
    script = rng.choice(["stats", "calc", "report"]) + ".py"
    failure = rng.choice([("ZeroDivisionError", "print(total / (len(nums) - len(nums)))"),
                          ("KeyError", "print({'a': 1}['" + rng.choice(WORDS) + "'])"),
                          ("ValueError", "print(int('" + rng.choice(WORDS) + "'))"),
                          ("IndexError", f"print(nums[{len(nums) + rng.randint(0, 5)}])")])
    ok = (f"nums = {nums}\ntotal = sum(nums)\nprint('count', len(nums))\n"
          "print('total', total)\nprint('max', max(nums))")
    return (f"Write {script} summarising {nums}, run it, then add a line that fails with "
            f"{failure[0]} and run it again.",
            [keys((f"cat > {script} <<'EOF'\n{ok}\nEOF\n", 0.1)), keys(f"python3 {script}", duration=0.3),
             keys(f"echo \"{failure[1]}\" >> {script}"), keys(f"tail -2 {script}"),
             keys(f"python3 {script}", duration=0.3), keys("echo \"exit: $?\"")],
            {"script": script, "nums": nums, "error": failure[0]})


def git_repo(rng):
    repo, who = rng.choice(WORDS) + "-project", rng.choice(WORDS).capitalize()
    f, msg = rng.choice(["README.md", "main.py", "notes.txt"]), rng.choice(["initial commit", "add file", "first version"])
    return (f"Create a git repository {repo}, commit {f}, change it and inspect the status.",
            [keys(f"git config --global user.name '{who}' && git config --global user.email "
                  f"'{who.lower()}@example.com'"),
             keys(f"git init -q {repo} && cd {repo}", duration=0.2),
             keys(f"echo '# {repo}' > {f} && git add {f}", duration=0.2),
             keys(f"git commit -q -m '{msg}' && git log --oneline", duration=0.3),
             keys(f"echo '{rng.choice(WORDS)}' >> {f} && git status --short", duration=0.2),
             keys("git diff --stat", duration=0.2), keys("git branch", duration=0.2)],
            {"repo": repo, "file": f, "message": msg, "user": who})


def env_vars(rng):
    var, value = "LWM_" + rng.choice(WORDS).upper(), rng.choice(WORDS) + str(rng.randint(1, 999))
    return (f"Set {var}={value}, check it is exported to child shells, then unset it.",
            [keys(f"export {var}={value}"), keys(f"echo ${var}"), keys("env | grep LWM_"),
             keys(f"bash -c 'echo child sees ${var}'"), keys(f"unset {var}"),
             keys(f"echo \"${{{var}:-unset}}\""), keys("echo $HOME $SHELL")],
            {"var": var, "value": value})


def directories(rng):
    a, b, c = _words(rng, 3)
    return (f"Build the tree {a}/{b}/{c}, move around it with cd and try a missing directory.",
            [keys(f"mkdir -p {a}/{b}/{c} && cd {a}/{b}"), keys("pwd"), keys("cd .. && ls"),
             keys("cd - && pwd"), keys(f"cd /{rng.choice(WORDS)}"), keys("cd ~ && pwd"),
             keys(f"ls -R {a}")],
            {"dirs": [a, b, c]})


def exit_status(rng):
    f, code = rng.choice(WORDS) + ".txt", rng.randint(2, 9)
    return (f"Show the exit status of failing and succeeding commands, including exit {code}.",
            [keys("false; echo $?"), keys("true; echo $?"),
             keys(f"test -f {f} && echo found || echo 'no {f}'"),
             keys(f"echo {rng.choice(WORDS)} > {f}; grep -q {rng.choice(WORDS)}zz {f}; echo $?"),
             keys(f"(exit {code}); echo \"status $?\""),
             keys("ls /nonexistent 2>/dev/null || echo \"failed with $?\"")],
            {"file": f, "code": code})


def long_running(rng):
    n, pause = rng.randint(3, 5), rng.choice([0.3, 0.4, 0.5])
    word = rng.choice(WORDS)
    return (f"Run a loop printing {n} ticks {pause}s apart, watch it finish, then interrupt a sleep.",
            [keys((f"for i in $(seq 1 {n}); do echo \"{word} $i\"; sleep {pause}; done; echo done\n",
                   pause * 1.5)),
             keys(("", pause * n + 0.3)),  # nothing typed: just wait for the rest of the output
             keys(("sleep 30\n", 0.2)), keys(("C-c", 0.1)), keys("echo interrupted $?")],
            {"ticks": n, "pause": pause, "word": word})


def find_xargs(rng):
    d = rng.choice(WORDS) + "_files"
    counts = {ext: rng.randint(1, 4) for ext in rng.sample(EXTS, 3)}
    make = " ".join(f"{w}{i}.{ext}" for ext, n in counts.items() for i, w in enumerate(_words(rng, n)))
    ext = rng.choice(list(counts))
    return (f"Create files in {d}, find the .{ext} ones, count them and delete them with xargs.",
            [keys(f"mkdir {d} && cd {d} && touch {make}"), keys("ls"),
             keys(f"find . -name '*.{ext}' | sort"), keys("find . -type f | wc -l"),
             keys(f"find . -name '*.{ext}' -print0 | xargs -0 rm -v"), keys("ls | wc -l")],
            {"dir": d, "counts": counts, "deleted_ext": ext})


def tar_archive(rng):
    d, archive = rng.choice(WORDS) + "_data", rng.choice(WORDS) + ".tar.gz"
    files = _words(rng, rng.randint(2, 4))
    return (f"Archive the directory {d} into {archive}, list it and restore it elsewhere.",
            [keys(f"mkdir {d} && for f in {' '.join(files)}; do echo $f > {d}/$f.txt; done"),
             keys(f"tar czf {archive} {d}", duration=0.2), keys(f"tar tzf {archive}", duration=0.2),
             keys(f"mkdir restore && tar xzf {archive} -C restore", duration=0.2),
             keys(f"diff -r {d} restore/{d} && echo identical"), keys(f"cat restore/{d}/{files[0]}.txt")],
            {"dir": d, "archive": archive, "files": files})


def sed_edit(rng):
    f = rng.choice(["app", "db", "cache"]) + ".conf"
    port, new_port = rng.randint(1000, 5000), rng.randint(6000, 9000)
    host = rng.choice(WORDS)
    return (f"Edit {f} with sed: change the port from {port} to {new_port} and drop a line.",
            [keys(f"printf 'host={host}\\nport={port}\\ndebug=true\\n' > {f}"), keys(f"cat {f}"),
             keys(f"sed -n '/port/p' {f}"), keys(f"sed -i 's/port={port}/port={new_port}/' {f}"),
             keys(f"sed '/debug/d' {f}"), keys(f"grep -n port {f}")],
            {"file": f, "port": port, "new_port": new_port, "host": host})


def permissions(rng):
    script = rng.choice(WORDS) + ".sh"
    word = rng.choice(WORDS)
    return (f"Write a shell script {script}, see it refuse to run without the execute bit, fix it.",
            [keys(f"printf '#!/bin/bash\\necho {word} from $0\\n' > {script}"), keys(f"./{script}"),
             keys(f"ls -l {script} | cut -d' ' -f1"), keys(f"chmod +x {script} && ./{script}"),
             keys("whoami; hostname; id -u")],
            {"script": script, "word": word})


TASKS: dict[str, Callable[[random.Random], tuple]] = {f.__name__: f for f in (
    notes_file, word_frequency, grep_log, awk_csv, missing_things, python_script, git_repo,
    env_vars, directories, exit_status, long_running, find_xargs, tar_archive, sed_edit,
    permissions)}


def make_task(index: int, seed: int, name: str | None = None) -> ScriptedTask:
    """Task `index` of a run: tasks cycle in order (balanced coverage), parameters from the seed."""
    rng = random.Random(f"{seed}:{index}")
    name = name or list(TASKS)[index % len(TASKS)]
    instruction, actions, params = TASKS[name](rng)
    return ScriptedTask(name, instruction, actions, params)
