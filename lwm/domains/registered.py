"""The domains beyond terminal and web, with their action and observation formats.

swe, search and mcp act through JSON tool calls (tools.py); os through pyautogui code; android
through JSON actions of AndroidWorld's space (its records come in through `lwm ingest`).
"""

from __future__ import annotations

from lwm.domains.base import ActionError, Domain
from lwm.domains.tools import ToolDomain


class SweDomain(ToolDomain):
    name = "swe"
    description = "a software repository worked on through file and shell tools"
    action_format = ('a JSON tool call {"name": tool, "arguments": {...}} with a tool from '
                     "read_file, write_file, replace, list_directory, search_file_content, "
                     "run_shell_command")
    observation_format = "the tool's result as text: file contents, listings, command output or an error"
    demo_actions = ('{"name": "list_directory", "arguments": {"path": "."}}',
                    '{"name": "read_file", "arguments": {"path": "setup.py"}}')


class SearchDomain(ToolDomain):
    name = "search"
    description = "a web search engine with a page extractor and a key-value memory"
    action_format = ('a JSON tool call {"name": "web_search" | "web_extractor" | "dict_memory", '
                     '"arguments": {...}}')
    observation_format = ("for web_search, ranked results '[n] url / Title / Snippet / Date'; for "
                          "web_extractor, the page as markdown; for dict_memory, the operation's result")
    tools_declared = False  # the engine's own three tools; imported records need not list them
    demo_actions = ('{"name": "web_search", "arguments": {"query": "python argparse subcommands"}}',
                    '{"name": "web_extractor", "arguments": {"url": '
                    '"https://docs.python.org/3/library/argparse.html"}}')


class McpDomain(ToolDomain):
    name = "mcp"
    description = "MCP servers exposing tools over the Model Context Protocol"
    action_format = 'a JSON tool call {"name": tool, "arguments": {...}} to a declared tool'
    observation_format = "the tool result's content as returned by the server, isError results included"
    demo_actions = ('{"name": "list_directory", "arguments": {"path": "/data"}}',
                    '{"name": "read_file", "arguments": {"path": "/data/todo.md"}}')


class OsDomain(Domain):
    name = "os"
    kind = "gui"
    description = "a Linux desktop with graphical applications"
    action_format = "pyautogui Python code, e.g. pyautogui.click(120, 48) or pyautogui.typewrite('x')"
    observation_format = "the linearised accessibility tree: tag, name, text, position and size per node"
    demo_actions = ("pyautogui.click(120, 48)", "pyautogui.typewrite('hello')")
    action_language = "python"  # the benchmark's OS turns hold the code in a Python block

    def check_action(self, action: str) -> None:
        """Non-empty Python source; a syntax error is data (Python reports it), a NUL byte is not."""
        if not isinstance(action, str) or not action.strip():
            raise ActionError(f"an os action is pyautogui code, got {action!r:.200}")
        if "\x00" in action:
            raise ActionError("action contains a NUL byte")


class AndroidDomain(Domain):
    name = "android"
    kind = "gui"
    description = "an Android phone"
    action_format = ('a JSON action such as {"action_type": "click", "x": 540, "y": 1200}, '
                     '{"action_type": "input_text", "text": "..."} or {"action_type": "navigate_back"}')
    observation_format = "the screen's UI element tree with class, text, resource id and bounds per element"
    demo_actions = ('{"action_type": "click", "x": 540, "y": 1200}',
                    '{"action_type": "input_text", "text": "weather"}')
