"""Scripted MCP tasks across the filesystem, git, time, memory and everything servers.

A task names the servers it needs and the files and repository to seed (params, so a replay
rebuilds the same state), and its tool calls. Names, contents, time zones and entities are drawn
from random.Random(f"{seed}:{index}"). Every task has at least one call the server rejects.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from data_pipeline.collect.base import ScriptedTask

FILES = "/home/user/files"   # the filesystem server's allowed directory
REPO = "/home/user/repo"     # the git server's repository

WORDS = ("amber", "cedar", "delta", "ember", "falcon", "harbor", "lantern", "maple", "orbit",
         "quartz", "saturn", "thistle", "willow", "zephyr", "copper", "meadow", "signal", "canyon")
ZONES = ("Europe/London", "Europe/Paris", "America/New_York", "America/Los_Angeles", "Asia/Tokyo",
         "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo", "Africa/Nairobi", "Pacific/Auckland")
PEOPLE = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger")
ROLES = ("engineer", "designer", "manager", "researcher", "analyst")


def call(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def _notes(rng: random.Random, n: int) -> dict[str, str]:
    words = rng.sample(WORDS, n)
    return {f"{w}.md": f"# {w.title()}\n\n" + "\n".join(f"- {x} {rng.randint(1, 99)}"
                                                       for x in rng.sample(WORDS, 3)) + "\n"
            for w in words}


def fs_explore(rng):
    files = _notes(rng, rng.randint(2, 4))
    files[f"data/{rng.choice(WORDS)}.csv"] = "id,value\n" + "".join(
        f"{i},{rng.randint(0, 500)}\n" for i in range(rng.randint(2, 5)))
    name = rng.choice([f for f in files if f.endswith(".md")])
    return ("Find the markdown notes in the shared folder and read one of them.",
            [call("list_allowed_directories"), call("list_directory", path=FILES),
             call("search_files", path=FILES, pattern="**/*.md"),
             call("read_text_file", path=f"{FILES}/{name}"),
             call("read_text_file", path=f"{FILES}/{rng.choice(WORDS)}_missing.txt"),
             call("directory_tree", path=FILES)],
            {"servers": ["filesystem"], "files": files})


def fs_write_edit(rng):
    w, old, new = rng.choice(WORDS), rng.randint(10, 99), rng.randint(100, 999)
    path = f"{FILES}/{w}.conf"
    return (f"Create {w}.conf, change its port from {old} to {new} and check the result.",
            [call("write_file", path=path, content=f"name={w}\nport={old}\ndebug=false\n"),
             call("edit_file", path=path, edits=[{"oldText": f"port={old}", "newText": f"port={new}"}]),
             call("read_text_file", path=path),
             call("edit_file", path=path, edits=[{"oldText": f"port={old}", "newText": "port=1"}]),
             call("read_text_file", path=path, head=2),
             call("list_directory_with_sizes", path=FILES)],
            {"servers": ["filesystem"], "files": {}})


def fs_organise(rng):
    files = _notes(rng, 3)
    target = rng.choice(WORDS) + "_archive"
    first, second = list(files)[:2]
    return (f"Move two notes into a new {target} folder and show the tree.",
            [call("create_directory", path=f"{FILES}/{target}"),
             call("move_file", source=f"{FILES}/{first}", destination=f"{FILES}/{target}/{first}"),
             call("move_file", source=f"{FILES}/{second}", destination=f"{FILES}/{target}/{second}"),
             call("move_file", source=f"{FILES}/{target}/{first}",
                  destination=f"{FILES}/{target}/{second}"),
             call("directory_tree", path=FILES),
             call("read_text_file", path="/etc/hostname")],
            {"servers": ["filesystem"], "files": files})


def _repo(rng):
    name = rng.choice(WORDS)
    return name, {"README.md": f"# {name}\n\nA small {rng.choice(ROLES)} tool.\n",
                  f"{name}.py": f"def {name}(x):\n    return x * {rng.randint(2, 9)}\n",
                  "VERSION": f"0.{rng.randint(1, 9)}.0\n"}


def git_inspect(rng):
    name, repo = _repo(rng)
    return (f"Inspect the {name} repository: status, history and the last commit.",
            [call("git_status", repo_path=REPO), call("git_log", repo_path=REPO, max_count=5),
             call("git_show", repo_path=REPO, revision="HEAD"),
             call("git_show", repo_path=REPO, revision=f"HEAD:{name}.py"),
             call("git_diff", repo_path=REPO, target=f"{rng.choice(WORDS)}-release"),
             call("git_branch", repo_path=REPO, branch_type="local")],
            {"servers": ["git"], "repo": repo})


def git_commit_flow(rng):
    name, repo = _repo(rng)
    factor = rng.randint(10, 20)
    return (f"Change {name}.py, stage and commit it, and check the history.",
            [call("edit_file", path=f"{REPO}/{name}.py",
                  edits=[{"oldText": "return x * ", "newText": f"return x * {factor} * "}]),
             call("git_status", repo_path=REPO), call("git_diff_unstaged", repo_path=REPO),
             call("git_add", repo_path=REPO, files=[f"{name}.py"]),
             call("git_diff_staged", repo_path=REPO),
             call("git_commit", repo_path=REPO, message=f"Scale {name} by {factor}"),
             call("git_log", repo_path=REPO, max_count=2),
             call("git_add", repo_path=REPO, files=[f"{rng.choice(WORDS)}_missing.txt"])],
            {"servers": ["git", "filesystem"], "repo": repo, "fs_roots": [REPO]})


def git_branching(rng):
    name, repo = _repo(rng)
    branch = f"feature/{rng.choice(WORDS)}"
    return (f"Create the branch {branch}, switch to it and list branches.",
            [call("git_create_branch", repo_path=REPO, branch_name=branch),
             call("git_checkout", repo_path=REPO, branch_name=branch),
             call("git_branch", repo_path=REPO, branch_type="local"),
             call("git_checkout", repo_path=REPO, branch_name=f"{rng.choice(WORDS)}-missing"),
             call("git_status", repo_path=REPO)],
            {"servers": ["git"], "repo": repo})


def time_zones(rng):
    a, b, c = rng.sample(ZONES, 3)
    hh, mm = rng.randint(0, 23), rng.choice([0, 15, 30, 45])
    return (f"Convert {hh:02d}:{mm:02d} in {a} to {b} and {c}.",
            [call("get_current_time", timezone=a),
             call("convert_time", source_timezone=a, time=f"{hh:02d}:{mm:02d}", target_timezone=b),
             call("convert_time", source_timezone=a, time=f"{hh:02d}:{mm:02d}", target_timezone=c),
             call("convert_time", source_timezone=a, time=f"{hh:02d}:{mm:02d}",
                  target_timezone=f"Mars/{rng.choice(WORDS).title()}"),
             call("convert_time", source_timezone=b, time=f"{rng.randint(24, 30)}:{mm:02d}",
                  target_timezone=c)],
            {"servers": ["time"]})


def memory_graph(rng):
    p, q = rng.sample(PEOPLE, 2)
    project = rng.choice(WORDS).title()
    fact = f"prefers {rng.choice(['tea', 'coffee', 'water'])}"
    return (f"Record that {p} and {q} work on project {project}, then query the graph.",
            [call("create_entities", entities=[
                {"name": p, "entityType": "person", "observations": [f"is a {rng.choice(ROLES)}"]},
                {"name": q, "entityType": "person", "observations": [fact]},
                {"name": project, "entityType": "project", "observations": ["started this year"]}]),
             call("create_relations", relations=[{"from": p, "to": project, "relationType": "works_on"},
                                                 {"from": q, "to": project, "relationType": "leads"}]),
             call("add_observations", observations=[{"entityName": p, "contents": [fact]}]),
             call("search_nodes", query=fact.split()[-1]), call("open_nodes", names=[project]),
             call("add_observations", observations=[{"entityName": rng.choice(WORDS),
                                                      "contents": ["unknown"]}])],
            {"servers": ["memory"]})


def memory_cleanup(rng):
    names = rng.sample(PEOPLE, 3)
    return (f"Add three people to the graph, remove {names[0]} and check what is left.",
            [call("create_entities", entities=[{"name": n, "entityType": "person",
                                                "observations": [f"joined in {rng.randint(2000, 2024)}"]}
                                               for n in names]),
             call("delete_entities", entityNames=[names[0]]),
             call("search_nodes", query=names[0]), call("read_graph"),
             call("delete_entities", entityNames=names[1])],
            {"servers": ["memory"]})


def everything_tools(rng):
    a, b = rng.randint(-50, 500), rng.randint(1, 500)
    return ("Try the reference server's tools: echo, a sum, an image and a resource.",
            [call("echo", message=f"{rng.choice(WORDS)} {rng.choice(WORDS)}"),
             call("get-sum", a=a, b=b), call("get-sum", a=str(a), b=None),
             call("get-tiny-image"),
             call("get-resource-reference", resourceType="Text", resourceId=rng.randint(1, 20)),
             call(f"{rng.choice(WORDS)}-tool", x=1)],
            {"servers": ["everything"]})


def notes_to_memory(rng):
    files = _notes(rng, 2)
    name = list(files)[0]
    entity = name[:-3].title()
    return (f"Read the note {name} and store it as an entity in the knowledge graph.",
            [call("read_text_file", path=f"{FILES}/{name}"),
             call("create_entities", entities=[{"name": entity, "entityType": "note",
                                                "observations": files[name].splitlines()[2:]}]),
             call("search_nodes", query=entity),
             call("read_text_file", path=f"{FILES}/../memory.jsonl"),
             call("open_nodes", names=[entity])],
            {"servers": ["filesystem", "memory"], "files": files})


TASKS: dict[str, Callable[[random.Random], tuple]] = {f.__name__: f for f in (
    fs_explore, fs_write_edit, fs_organise, git_inspect, git_commit_flow, git_branching,
    time_zones, memory_graph, memory_cleanup, everything_tools, notes_to_memory)}


def make_task(index: int, seed: int, name: str | None = None) -> ScriptedTask:
    """Task `index` of a run: types cycle in order, parameters come from (seed, index)."""
    rng = random.Random(f"{seed}:{index}")
    name = name or list(TASKS)[index % len(TASKS)]
    instruction, actions, params = TASKS[name](rng)
    return ScriptedTask(name, instruction, actions, params)
