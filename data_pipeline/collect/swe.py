"""The swe domain's collector: a real Python repository worked on through file and shell tools.

Each episode unpacks a real source distribution (six, toolz, more-itertools) into a fresh
sandbox's home, makes it a git repository and exposes six tools to the agent. File tools are
real file operations on the host side of the sandbox's tmpfs, confined to the repository (paths
are resolved, symlinks included, before use); run_shell_command runs bash inside the sandbox
(bubblewrap, no network, pids cgroup, rlimits), so tests and scripts run as in a checkout.

Action: a JSON tool call {"name": tool, "arguments": {...}}. Observation: the tool's result
text; a failed call is an observation starting with "Error: ".
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

from data_pipeline.collect.base import Collector, Environment, ScriptedTask
from data_pipeline.collect.swe_tasks import PACKAGES, make_task, require_sdists, sdist_path
from data_pipeline.sandbox import HOME, Sandbox
from lwm.domains.registered import SweDomain
from lwm.domains.tools import extract_tool_call, parse_tool_call

REPO = f"{HOME}/repo"       # the repository as the agent (and the shell) sees it
_MAX_MATCHES = 200
_GITCONFIG = "[user]\n\tname = Agent\n\temail = agent@sandbox\n[init]\n\tdefaultBranch = main\n"


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


_PATH = {"type": "string", "description": f"a path relative to the repository root ({REPO}) or absolute inside it"}
TOOLS = [
    _tool("read_file", "Read a text file of the repository. With offset and limit, only that range "
          "of lines (0-based offset) is returned.",
          {"path": _PATH, "offset": {"type": "integer", "description": "first line, 0-based"},
           "limit": {"type": "integer", "description": "number of lines"}}, ["path"]),
    _tool("write_file", "Create or overwrite a file with the given content (parent directories are "
          "created).", {"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
    _tool("replace", "Replace exact text in a file. old_string must occur exactly "
          "expected_replacements times (default 1), otherwise nothing is changed.",
          {"path": _PATH, "old_string": {"type": "string"}, "new_string": {"type": "string"},
           "expected_replacements": {"type": "integer", "minimum": 1}},
          ["path", "old_string", "new_string"]),
    _tool("list_directory", "List a directory: subdirectories first as [DIR], then files with "
          "their size in bytes.", {"path": _PATH}, ["path"]),
    _tool("search_file_content", "Search files for a regular expression (Python syntax); returns "
          "matching lines as path:line: text. include filters file names with a glob such as '*.py'.",
          {"pattern": {"type": "string"}, "path": _PATH, "include": {"type": "string"}}, ["pattern"]),
    _tool("run_shell_command", f"Run a bash command in the repository ({REPO}); returns its "
          "combined stdout and stderr and its exit code. python3 (with pytest) and git are "
          "installed; there is no network.",
          {"command": {"type": "string"}, "description": {"type": "string"}}, ["command"]),
]
_REQUIRED = {t["name"]: t["parameters"]["required"] for t in TOOLS}


class ToolError(Exception):
    """A failed tool call; its message becomes the observation."""


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters truncated] ...\n{text[-half:]}"


def _walk(top: Path) -> list[Path]:
    """Files under `top` in a stable order, without git's internals."""
    out = []
    for d, dirs, files in os.walk(top):
        dirs[:] = sorted(x for x in dirs if x != ".git")
        out += [Path(d, f) for f in sorted(files)]
    return out


class SweEnv(Environment):
    tools = TOOLS

    def __init__(self, cfg):
        self.cfg, self.scfg = cfg, cfg.swe
        self.sdist_dir = require_sdists(self.scfg.sdist_dir)
        self.sandbox: Sandbox | None = None
        self.root: Path | None = None

    # --- episode -------------------------------------------------------------------------
    def reset(self, task: ScriptedTask | None = None) -> str:
        self.close()
        package = (task.params.get("package") if task else None) or next(iter(PACKAGES))
        self.sandbox = Sandbox(self.cfg.sandbox)
        self.sandbox.start()
        try:
            return self._checkout(package)
        except BaseException:
            self.close()
            raise

    def _checkout(self, package: str) -> str:
        spec = PACKAGES[package]
        self.root = self.sandbox.home / "repo"
        with tarfile.open(sdist_path(self.sdist_dir, package)) as tar:
            tar.extractall(self.sandbox.home, filter="data")
        (self.sandbox.home / spec["dir"]).rename(self.root)
        (self.sandbox.home / ".gitconfig").write_text(_GITCONFIG)
        r = self.sandbox.run(f"cd {REPO} && git init -q && git add -A && "
                             f"git commit -q -m 'Import {spec['dir']}'", timeout=self.scfg.action_timeout_s)
        if r.returncode != 0:
            raise RuntimeError(f"git init of {package} failed: {r.stderr.strip()}")
        listing = self._list_directory({"path": "."})
        return f"Repository {spec['dir']} (git, branch main, clean) at {REPO}\n{listing}"

    def step(self, action: str) -> str:
        if self.sandbox is None:
            raise RuntimeError("step() before reset()")
        name, args = parse_tool_call(action)
        try:
            if name not in _REQUIRED:
                raise ToolError(f"unknown tool '{name}' (tools: {', '.join(_REQUIRED)})")
            missing = [p for p in _REQUIRED[name] if p not in args]
            if missing:
                raise ToolError(f"{name}: missing required parameter '{missing[0]}'")
            result = getattr(self, f"_{name}")(args)
        except ToolError as e:
            result = f"Error: {e}"
        return _clip(result, self.scfg.max_output_chars)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox, self.root = None, None

    # --- paths ---------------------------------------------------------------------------
    def _resolve(self, path) -> tuple[Path, str]:
        """(host path, repository-relative name); ToolError for anything outside the repo."""
        if not isinstance(path, str) or not path:
            raise ToolError("path must be a non-empty string")
        rel = path[len(REPO):].lstrip("/") if path == REPO or path.startswith(REPO + "/") else path
        if os.path.isabs(rel):
            raise ToolError(f"path is outside the repository {REPO}: {path}")
        root = self.root.resolve()
        host = (root / rel).resolve()
        if host != root and root not in host.parents:
            raise ToolError(f"path is outside the repository {REPO}: {path}")
        return host, str(host.relative_to(root)) if host != root else "."

    @staticmethod
    def _int(args: dict, key: str, default: int | None) -> int | None:
        value = args.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ToolError(f"'{key}' must be a non-negative integer, got {value!r}")
        return value

    # --- tools ---------------------------------------------------------------------------
    def _read_file(self, args: dict) -> str:
        host, rel = self._resolve(args["path"])
        offset, limit = self._int(args, "offset", 0), self._int(args, "limit", None)
        if host.is_dir():
            raise ToolError(f"{rel} is a directory, not a file")
        if not host.is_file():
            raise ToolError(f"file not found: {rel}")
        data = host.read_bytes()
        if b"\0" in data[:8192]:
            raise ToolError(f"cannot read binary file: {rel}")
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        end = len(lines) if limit is None else min(len(lines), offset + limit)
        if offset == 0 and end == len(lines):
            return "".join(lines)
        if offset >= len(lines) and lines:
            raise ToolError(f"offset {offset} is beyond the end of {rel} ({len(lines)} lines)")
        return f"[{rel}: lines {offset + 1}-{end} of {len(lines)}]\n" + "".join(lines[offset:end])

    def _write_file(self, args: dict) -> str:
        host, rel = self._resolve(args["path"])
        content = args["content"]
        if not isinstance(content, str):
            raise ToolError("'content' must be a string")
        if host.is_dir():
            raise ToolError(f"{rel} is a directory, not a file")
        existed = host.exists()
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_text(content, encoding="utf-8")
        except OSError as e:
            raise ToolError(f"cannot write {rel}: {e.strerror}") from None
        size = len(content.encode())
        return f"{'Overwrote' if existed else 'Created'} file {rel} ({size} bytes)"

    def _replace(self, args: dict) -> str:
        host, rel = self._resolve(args["path"])
        old, new = args["old_string"], args["new_string"]
        expected = self._int(args, "expected_replacements", 1)
        if not isinstance(old, str) or not isinstance(new, str):
            raise ToolError("'old_string' and 'new_string' must be strings")
        if not host.is_file():
            raise ToolError(f"file not found: {rel}")
        if not old:
            raise ToolError("'old_string' is empty; use write_file to create or overwrite a file")
        text = host.read_text(encoding="utf-8", errors="replace")
        found = text.count(old)
        if found == 0:
            raise ToolError(f"old_string not found in {rel}; nothing replaced")
        if found != expected:
            raise ToolError(f"expected {expected} occurrence(s) of old_string in {rel}, found "
                            f"{found}; nothing replaced")
        host.write_text(text.replace(old, new), encoding="utf-8")
        return f"Replaced {found} occurrence(s) in {rel}"

    def _list_directory(self, args: dict) -> str:
        host, rel = self._resolve(args["path"])
        if host.is_file():
            raise ToolError(f"{rel} is a file, not a directory")
        if not host.is_dir():
            raise ToolError(f"directory not found: {rel}")
        entries = sorted(host.iterdir(), key=lambda p: (not p.is_dir(), p.name))
        lines = [f"[DIR] {p.name}" if p.is_dir() else f"{p.name} ({p.lstat().st_size} bytes)"
                 for p in entries]
        return f"Directory {rel}:\n" + ("\n".join(lines) if lines else "(empty)")

    def _search_file_content(self, args: dict) -> str:
        pattern, include = args["pattern"], args.get("include")
        host, rel = self._resolve(args.get("path", "."))
        try:
            regex = re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ToolError(f"invalid regular expression {pattern!r}: {e}") from None
        if not host.exists():
            raise ToolError(f"path not found: {rel}")
        root = self.root.resolve()
        files = [host] if host.is_file() else _walk(host)
        matches = []
        for f in files:
            if include and not fnmatch.fnmatch(f.name, include) or f.is_symlink():
                continue
            data = f.read_bytes()
            if b"\0" in data[:8192]:
                continue
            for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if regex.search(line):
                    matches.append(f"{f.relative_to(root)}:{n}: {line.strip()[:300]}")
        where = f"/{pattern}/ in {rel}" + (f" ({include})" if include else "")
        if not matches:
            return f"No matches found for {where}"
        more = f"\n... {len(matches) - _MAX_MATCHES} more matches" if len(matches) > _MAX_MATCHES else ""
        return f"Found {len(matches)} match(es) for {where}:\n" + "\n".join(matches[:_MAX_MATCHES]) + more

    def _run_shell_command(self, args: dict) -> str:
        command = args["command"]
        if not isinstance(command, str) or not command.strip():
            raise ToolError("'command' must be a non-empty string")
        proc = self.sandbox.popen(["/bin/bash", "--norc", "--noprofile", "-c", command], cwd=REPO,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            out, _ = proc.communicate(timeout=self.scfg.action_timeout_s)
            code = str(proc.returncode)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            code = f"killed after timing out ({self.scfg.action_timeout_s:g}s)"
        out = out.rstrip("\n")
        return f"Command: {command}\nOutput:{chr(10) + out if out else ' (empty)'}\nExit Code: {code}"


_AGENT_PROMPT = """You are a software engineering agent working in {description}: a Python repository at {repo}.
The shell has python3 (with pytest) and git, and no network.
Tools:
{tools}
Answer every turn with {action_format}, and nothing else.
Reply {{"name": "done"}} when the task is complete."""


class SweCollector(Collector):
    domain = "swe"

    def environment(self) -> SweEnv:
        return SweEnv(self.cfg)

    def task(self, index: int, seed: int) -> ScriptedTask:
        return make_task(index, seed, self.cfg.swe.sdist_dir)

    def agent_prompt(self) -> str:
        domain = SweDomain()
        tools = "\n".join(json.dumps(t, ensure_ascii=False) for t in TOOLS)
        return _AGENT_PROMPT.format(description=domain.description, repo=REPO, tools=tools,
                                    action_format=domain.action_format)

    def parse_reply(self, reply: str) -> str | None:
        return extract_tool_call(reply)
