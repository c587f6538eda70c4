"""The search domain: a local web-search engine over a real offline corpus, with a page
extractor and a per-episode key-value memory, driven by JSON tool calls.

An action is one tool call {"name": ..., "arguments": {...}} with a tool of TOOLS. The
observation is the tool's text result; a tool that fails (an unknown URL, a missing key, a
query with no hits) answers with its error as the observation, as a live search API does.

web_search layout (one block per result, blocks separated by a blank line):

    Search results for "tar archive" (3 of 128):

    [1] https://packages.debian.org/bookworm/tar
    Title: tar - GNU version of the tar archiving utility
    Snippet: Tar is a program for packaging a set of files as a single archive ...
    Date: 2026-07-11

A batched call (query as a list) repeats that section per query, separated by a line "---".
Nothing here runs agent-written code (searches, reads of indexed documents and a dict), so no
sandbox is needed; the memory is wiped on every reset.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import tantivy

from data_pipeline.collect.base import Collector, Environment, ScriptedTask
from data_pipeline.collect.search_index import (html_to_text, open_index, plain_text,
                                                 rst_to_markdown)
from lwm.domains.base import without_reasoning
from lwm.domains.registered import SearchDomain
from lwm.domains.tools import extract_tool_call, parse_tool_call

TOOLS = [
    {"type": "function", "function": {
        "name": "web_search",
        "description": "Search the web. Returns ranked results (url, title, snippet, date). Pass a "
                       "list of queries to run several searches in one call.",
        "parameters": {"type": "object", "properties": {
            "query": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                      "description": "the search query, or a list of queries"},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20,
                      "description": "results per query (default 5)"}},
            "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "web_extractor",
        "description": "Fetch a web page by URL and return its content as markdown.",
        "parameters": {"type": "object", "properties": {
            "url": {"type": "string", "description": "the page's URL, e.g. from a search result"}},
            "required": ["url"]}}},
    {"type": "function", "function": {
        "name": "dict_memory",
        "description": "A key-value notebook kept for this task: add a note, update it, retrieve "
                       "one (or all, without a key) or remove one.",
        "parameters": {"type": "object", "properties": {
            "operation": {"type": "string", "enum": ["add", "update", "retrieve", "remove"]},
            "key": {"type": "string"},
            "value": {"type": "string", "description": "the note (add and update)"}},
            "required": ["operation"]}}},
]
TOOL_NAMES = {t["function"]["name"] for t in TOOLS}
_OPS = ("add", "update", "retrieve", "remove")


class SearchEnv(Environment):
    tools = TOOLS

    def __init__(self, cfg):
        self.cfg = cfg
        self.index = open_index(cfg.cache_dir, list(cfg.sources), list(cfg.corpus_dirs))
        self.index.reload()
        self.searcher = self.index.searcher()
        self.memory: dict[str, str] = {}

    # --- episode -----------------------------------------------------------------------------
    def reset(self, task: ScriptedTask | None = None) -> str:
        self.memory = {}
        return (f"Tools: {', '.join(sorted(TOOL_NAMES))}. The search index holds "
                f"{self.searcher.num_docs} documents. The memory is empty.")

    def close(self) -> None:
        self.memory = {}

    def step(self, action: str) -> str:
        name, args = parse_tool_call(action)
        try:
            if name == "web_search":
                return self.web_search(args.get("query"), args.get("top_k", self.cfg.top_k))
            if name == "web_extractor":
                return self.web_extractor(args.get("url"))
            if name == "dict_memory":
                return self.dict_memory(args.get("operation"), args.get("key"), args.get("value"))
            return f"Error: unknown tool '{name}'. Available tools: {', '.join(sorted(TOOL_NAMES))}."
        except _ToolError as e:
            return f"Error: {e}"

    # --- tools -------------------------------------------------------------------------------
    def web_search(self, query, top_k) -> str:
        queries = query if isinstance(query, list) else [query]
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise _ToolError("'query' must be a non-empty string or a list of non-empty strings.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 20:
            raise _ToolError("'top_k' must be an integer between 1 and 20.")
        if len(queries) > self.cfg.max_batch:
            raise _ToolError(f"at most {self.cfg.max_batch} queries per call, got {len(queries)}.")
        return "\n---\n".join(self._search_one(q.strip(), top_k) for q in queries)

    def _search_one(self, q: str, top_k: int) -> str:
        # The query language's operators (AND, "phrases", field:) work; a malformed part is
        # dropped rather than failing the whole search, as a web engine would.
        parsed, _ = self.index.parse_query_lenient(q, ["title", "body"], field_boosts={"title": 3.0})
        result = self.searcher.search(parsed, top_k, count=True)
        if not result.hits:
            return f'No results found for "{q}".'
        terms = [t.lower() for t in re.findall(r"\w{3,}", q)]
        blocks = [f'Search results for "{q}" ({len(result.hits)} of {result.count}):']
        for n, (_, address) in enumerate(result.hits, 1):
            doc = self.searcher.doc(address)
            blocks.append(f"[{n}] {doc['url'][0]}\nTitle: {doc['title'][0]}\n"
                          f"Snippet: {snippet(plain_text(doc['body'][0], doc['kind'][0]), terms)}\nDate: {doc['date'][0] or 'n/a'}")
        return "\n\n".join(blocks)

    def web_extractor(self, url) -> str:
        if not isinstance(url, str) or not url.strip():
            raise _ToolError("'url' must be a non-empty string.")
        url = url.strip()
        if not re.match(r"^(https?|file)://", url):
            raise _ToolError(f"invalid URL '{url}': expected http://, https:// or file://.")
        hits = self.searcher.search(tantivy.Query.term_query(self.index.schema, "url", url), 1).hits
        if not hits:
            raise _ToolError(f"failed to fetch {url}: 404 Not Found.")
        doc = self.searcher.doc(hits[0][1])
        page = render_page({k: doc[k][0] for k in ("url", "title", "body", "date", "kind", "path")},
                           self.cfg.action_timeout_s)
        limit = self.cfg.max_page_chars
        if len(page) > limit:
            page = page[:limit].rsplit("\n", 1)[0] + f"\n\n[... truncated: {len(page)} characters in all]"
        return page

    def dict_memory(self, op, key, value) -> str:
        if op not in _OPS:
            raise _ToolError(f"'operation' must be one of {', '.join(_OPS)}, got {op!r}.")
        if op == "retrieve" and key is None:
            if not self.memory:
                return "The memory is empty."
            return "\n".join(f"{k}: {v}" for k, v in self.memory.items())
        if not isinstance(key, str) or not key:
            raise _ToolError(f"'{op}' needs a non-empty string 'key'.")
        if op in ("add", "update") and not isinstance(value, str):
            raise _ToolError(f"'{op}' needs a string 'value'.")
        if op == "add":
            if key in self.memory:
                raise _ToolError(f"key '{key}' already exists; use update to change it.")
            self.memory[key] = value
            return f"Added '{key}' ({len(self.memory)} keys in memory)."
        if key not in self.memory:
            known = ", ".join(sorted(self.memory)) or "none"
            raise _ToolError(f"key '{key}' not found (keys: {known}).")
        if op == "update":
            self.memory[key] = value
            return f"Updated '{key}'."
        if op == "retrieve":
            return f"{key}: {self.memory[key]}"
        del self.memory[key]
        return f"Removed '{key}' ({len(self.memory)} keys in memory)."


class _ToolError(Exception):
    pass


def snippet(body: str, terms: list[str], width: int = 220) -> str:
    """A window of the body around the first query term (the start when none occurs)."""
    text = re.sub(r"\s+", " ", body).strip()
    lower = text.lower()
    at = min((i for i in (lower.find(t) for t in terms) if i >= 0), default=0)
    start = max(0, text.rfind(" ", 0, max(0, at - width // 3)) + 1) if at > width // 3 else 0
    piece = text[start:start + width]
    if start + width < len(text):
        piece = piece.rsplit(" ", 1)[0] + " ..."
    return ("... " if start else "") + piece


def render_page(doc: dict, timeout_s: float = 30.0) -> str:
    """The document as the markdown a page extractor returns."""
    kind, title = doc["kind"], doc["title"]
    if kind == "debian":
        long, _, meta = doc["body"].partition('\n\n{"')
        fields = json.loads('{"' + meta) if meta else {}
        name, _, short = title.partition(" - ")
        lines = [f"# Package: {name} ({fields.get('Version', '')})", "", f"**{short}**", "", long, ""]
        lines += [f"- **{k}:** {v}" for k, v in fields.items() if k != "Version"]
        return "\n".join(lines).strip()
    if kind == "python":
        return rst_to_markdown(doc["body"]).strip()
    if kind == "man":
        out = subprocess.run(["man", "-l", doc["path"]], capture_output=True, timeout=timeout_s,
                             env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8",
                                  "MAN_KEEP_FORMATTING": ""}).stdout.decode("utf-8", "replace")
        plain = re.sub(".\x08", "", out).strip()  # drop overstrike bold/underline, if any
        return f"# {title}\n\n```\n{plain}\n```"
    if doc["path"].lower().endswith((".html", ".htm")):
        return f"# {title}\n\n{html_to_text(open(doc['path'], errors='replace').read())}"
    return doc["body"].strip()



_AGENT_PROMPT = """You are a research agent with {description}.
Answer the user's question by searching, reading pages and keeping notes. Each turn, reply with
exactly one tool call as a JSON object: {action_format}. Tools:
{tools}
When you have the answer, reply with DONE: <your answer> and no tool call."""


class SearchCollector(Collector):
    domain = "search"

    def environment(self) -> SearchEnv:
        return SearchEnv(self.cfg.search)

    def task(self, index: int, seed: int) -> ScriptedTask:
        from data_pipeline.collect.search_tasks import make_task
        return make_task(index, seed)

    def agent_prompt(self) -> str:
        d = SearchDomain()
        return _AGENT_PROMPT.format(description=d.description, action_format=d.action_format,
                                    tools=json.dumps(TOOLS, indent=1))

    def parse_reply(self, reply: str) -> str | None:
        action = extract_tool_call(reply, TOOL_NAMES)
        if action is None and re.search(r"^\s*DONE\b", without_reasoning(reply), re.M):
            return ""
        return action
