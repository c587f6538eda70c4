"""The mcp domain's collector: real MCP servers over stdio, driven by the official `mcp` SDK.

Each episode starts a fresh sandbox (bubblewrap, no network, pids cgroup, rlimits) and, inside
it, the servers its task names: filesystem (limited to directories in the sandbox's home), git
(on a seeded repository there), time, memory (its graph file in the sandbox) and everything
(the protocol's reference server). Their tools, as tools/list reports them, are env.tools.

The SDK is async and its contexts must close in the task that opened them, so one event loop
runs in a daemon thread and each episode is one coroutine there: it opens every server, reports
the tools, then serves tool calls from a queue until close(). reset() and step() stay synchronous.

Action: {"name": tool, "arguments": {...}}. Observation: the result's content parts joined by
newlines (text as is; images, audio and blobs as a one-line placeholder; embedded text resources
as their text); an isError result, or an MCP error response, is the same text after a first
line "isError: true".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from contextlib import AsyncExitStack
from dataclasses import fields
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from data_pipeline.collect.base import Collector, Environment, ScriptedTask
from data_pipeline.collect.mcp_tasks import FILES, REPO, make_task
from data_pipeline.sandbox import Sandbox, SandboxError
from lwm.config import SandboxConfig
from lwm.domains.registered import McpDomain
from lwm.domains.tools import extract_tool_call, parse_tool_call

ERROR_LINE = "isError: true"
_INSTALL = {"python": "python3 -m venv {dir} && {dir}/bin/pip install mcp-server-git mcp-server-time",
            "node": "npm install -g @modelcontextprotocol/server-filesystem "
                    "@modelcontextprotocol/server-memory @modelcontextprotocol/server-everything"}
_SEED_DATE = "2024-05-01T12:00:00+00:00"  # fixed dates: seeded commits have the same hashes on replay


def server_argv(name: str, ecfg, params: dict) -> list[str]:
    """The command line, inside the sandbox, of server `name` for a task with `params`."""
    node, python = ecfg.node_bin, ecfg.python_bin
    return {
        "filesystem": [f"{node}/mcp-server-filesystem", *params.get("fs_roots", [FILES])],
        "memory": ["/usr/bin/env", f"MEMORY_FILE_PATH={Path(FILES).parent}/memory.jsonl",
                   f"{node}/mcp-server-memory"],
        "everything": [f"{node}/mcp-server-everything", "stdio"],
        "git": [f"{python}/mcp-server-git", "--repository", REPO],
        "time": [f"{python}/mcp-server-time", "--local-timezone", "UTC"],
    }[name]


def check_servers(ecfg) -> None:
    """A clear error naming the install command when a server's executable is missing."""
    for kind, directory, exe in (("node", ecfg.node_bin, "mcp-server-filesystem"),
                                 ("python", ecfg.python_bin, "mcp-server-git")):
        if not Path(directory, exe).exists():
            install = _INSTALL[kind].format(dir=Path(ecfg.python_bin).parent)
            raise SandboxError(f"mcp collector: {directory}/{exe} not found; install with: {install}")
        if not str(Path(directory).resolve()).startswith("/usr/"):
            raise SandboxError(f"mcp collector: {directory} must lie under /usr (the sandbox "
                               "sees only the host's /usr)")


def render_result(result) -> str:
    """A CallToolResult as the observation text (see the module docstring)."""
    parts = []
    for c in result.content:
        kind = getattr(c, "type", "")
        if kind == "text":
            parts.append(c.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {c.mime_type}, {len(c.data)} base64 characters]")
        elif kind == "resource":
            r = c.resource
            text = getattr(r, "text", None)
            parts.append(text if text is not None else
                         f"[resource {r.uri} {r.mime_type}, {len(r.blob)} base64 characters]")
        elif kind == "resource_link":
            parts.append(f"[resource link {c.uri}: {c.name}]")
        else:
            parts.append(json.dumps(c.model_dump(mode="json", by_alias=True, exclude_none=True)))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    return f"{ERROR_LINE}\n{text}" if result.is_error else text


class _Loop:
    """One asyncio loop in a daemon thread, shared by the environments of a process."""

    _instance: "_Loop | None" = None

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="mcp-loop", daemon=True).start()

    @classmethod
    def get(cls) -> "_Loop":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


class McpEnv(Environment):
    def __init__(self, cfg):
        self.cfg, self.ecfg = cfg, cfg.mcp
        check_servers(self.ecfg)
        self.loop = _Loop.get().loop
        self.sandbox: Sandbox | None = None
        self.episode: concurrent.futures.Future | None = None
        self.queue: asyncio.Queue | None = None
        self.routes: dict[str, str] = {}
        self.tools: list[dict] = []

    def _sandbox_cfg(self) -> SandboxConfig:
        base = {f.name: getattr(self.cfg.sandbox, f.name) for f in fields(SandboxConfig)}
        return SandboxConfig(**{**base, "memory_mb": max(base["memory_mb"], self.ecfg.memory_mb)})

    # --- episode -------------------------------------------------------------------------
    def reset(self, task: ScriptedTask | None = None) -> str:
        self.close()
        params = task.params if task else {"servers": ["filesystem", "git", "time", "memory",
                                                       "everything"]}
        self.sandbox = Sandbox(self._sandbox_cfg())
        try:
            self.sandbox.start()
            self._seed(params)
            return self._start(params)
        except BaseException:
            self.close()
            raise

    def _seed(self, params: dict) -> None:
        """The episode's files and git repository, in the sandbox's (wiped) home."""
        home = self.sandbox.home
        for root, files in ((FILES, params.get("files", {})), (REPO, params.get("repo", {}))):
            base = home / Path(root).relative_to("/home/user")
            base.mkdir(parents=True, exist_ok=True)
            for rel, content in files.items():
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                (base / rel).write_text(content)
        if "git" in params["servers"]:
            (home / ".gitconfig").write_text("[user]\n\tname = Agent\n\temail = agent@sandbox\n"
                                             "[init]\n\tdefaultBranch = main\n")
            r = self.sandbox.run(
                f"cd {REPO} && git init -q && git add -A && GIT_AUTHOR_DATE={_SEED_DATE} "
                f"GIT_COMMITTER_DATE={_SEED_DATE} git commit -q --allow-empty -m 'Initial commit'")
            if r.returncode != 0:
                raise RuntimeError(f"seeding the git repository failed: {r.stderr.strip()}")

    def _start(self, params: dict) -> str:
        argvs = {name: self.sandbox.bwrap_argv(server_argv(name, self.ecfg, params))
                 for name in params["servers"]}
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self.episode = asyncio.run_coroutine_threadsafe(self._serve(argvs, ready), self.loop)
        try:
            infos, tools = ready.result(timeout=self.ecfg.startup_timeout_s)
        except Exception as e:  # noqa: BLE001 - the servers' stderr says why, not the SDK
            logs = {n: (self.sandbox.dir / f"{n}.log").read_text(errors="replace")[-600:].strip()
                    for n in argvs if (self.sandbox.dir / f"{n}.log").exists()}
            why = "timed out" if isinstance(e, concurrent.futures.TimeoutError) else repr(e)[:300]
            raise RuntimeError(f"MCP servers {list(argvs)} did not start ({why}); stderr: {logs}") from None
        self.tools = [t for _, t in tools]
        self.routes = {t["name"]: server for server, t in tools}
        if len(self.routes) != len(tools):
            raise RuntimeError(f"tool names collide across servers {list(argvs)}")
        lines = [f"{name}: {info} ({len([1 for s, _ in tools if s == name])} tools)"
                 for name, info in infos.items()]
        return "Connected MCP servers:\n" + "\n".join(lines)

    async def _serve(self, argvs: dict[str, list[str]], ready: concurrent.futures.Future) -> None:
        """Open every server, report (server infos, tools), then serve calls until None."""
        self.queue = queue = asyncio.Queue()
        try:
            async with AsyncExitStack() as stack:
                sessions, infos, tools = {}, {}, []
                for name, argv in argvs.items():
                    log = stack.enter_context(open(self.sandbox.dir / f"{name}.log", "w"))
                    server = StdioServerParameters(command=argv[0], args=argv[1:])
                    read, write = await stack.enter_async_context(stdio_client(server, errlog=log))
                    session = await stack.enter_async_context(ClientSession(read, write))
                    init = await session.initialize()
                    infos[name] = f"{init.server_info.name} {init.server_info.version}"
                    for tool in (await session.list_tools()).tools:
                        d = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
                        tools.append((name, {k: d[k] for k in ("name", "description", "inputSchema")
                                             if k in d}))
                    sessions[name] = session
                ready.set_result((infos, tools))
                while (item := await queue.get()) is not None:
                    server, tool, args, done = item
                    try:
                        done.set_result(await sessions[server].call_tool(
                            tool, args, read_timeout_seconds=self.ecfg.action_timeout_s))
                    except Exception as e:  # noqa: BLE001 - MCP errors are observations
                        done.set_exception(e)
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise

    def step(self, action: str) -> str:
        if self.episode is None:
            raise RuntimeError("step() before reset()")
        name, args = parse_tool_call(action)
        # An undeclared tool goes to the first server, which answers with its own error.
        server = self.routes.get(name, next(iter(self.routes.values()), ""))
        done: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (server, name, args, done))
        try:
            return render_result(done.result(timeout=self.ecfg.action_timeout_s + 10))
        except MCPError as e:
            return f"{ERROR_LINE}\nMCP error {e.code}: {e.message}"
        except concurrent.futures.TimeoutError:
            if self.episode.done() and self.episode.exception():
                raise RuntimeError(f"MCP session ended: {self.episode.exception()!r}") from None
            raise

    def close(self) -> None:
        if self.episode is not None:
            if self.queue is not None:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
            try:
                self.episode.result(timeout=10)  # the servers' contexts close in their own task
            except Exception:  # noqa: BLE001 - a broken episode still gets its sandbox wiped
                self.episode.cancel()
            self.episode, self.queue = None, None
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
        self.tools, self.routes = [], {}


_AGENT_PROMPT = """You are an agent using {description}.
The first observation names the servers connected in this episode; their tools are:
{tools}
Answer every turn with {action_format}, and nothing else.
Reply {{"name": "done"}} when the task is complete."""


class McpCollector(Collector):
    domain = "mcp"

    def environment(self) -> McpEnv:
        return McpEnv(self.cfg)

    def task(self, index: int, seed: int) -> ScriptedTask:
        return make_task(index, seed)

    def agent_prompt(self) -> str:
        if not hasattr(self, "_prompt"):  # the tools come from the real servers, listed once
            env = McpEnv(self.cfg)
            try:
                env.reset()
                by_server = {}
                for tool in env.tools:
                    by_server.setdefault(env.routes[tool["name"]], []).append(json.dumps(tool))
            finally:
                env.close()
            tools = "\n".join(f"[{server}]\n" + "\n".join(lines) for server, lines in by_server.items())
            domain = McpDomain()
            self._prompt = _AGENT_PROMPT.format(description=domain.description, tools=tools,
                                                action_format=domain.action_format)
        return self._prompt

    def parse_reply(self, reply: str) -> str | None:
        return extract_tool_call(reply)
