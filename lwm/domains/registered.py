"""The six domains beyond terminal, registered with their action and observation formats.

Their collectors come later; their records already validate, render and verify.
"""

from __future__ import annotations

from lwm.domains.base import Domain


class SweDomain(Domain):
    name = "swe"
    description = "a software repository worked on through file and shell tools"
    action_format = ('a JSON tool call {"name": tool, "arguments": {...}} with a tool from '
                     "read_file, write_file, replace, list_directory, search_file_content, "
                     "run_shell_command")
    observation_format = "the tool's result as text: file contents, listings, command output or an error"


class SearchDomain(Domain):
    name = "search"
    description = "a web search engine with a page extractor and a key-value memory"
    action_format = ('a JSON tool call {"name": "web_search" | "web_extractor" | "dict_memory", '
                     '"arguments": {...}}')
    observation_format = ("for web_search, ranked results '[n] url / Title / Snippet / Date'; for "
                          "web_extractor, the page as markdown; for dict_memory, the operation's result")


class McpDomain(Domain):
    name = "mcp"
    description = "MCP servers exposing tools over the Model Context Protocol"
    action_format = 'a JSON tool call {"name": tool, "arguments": {...}} to a declared tool'
    observation_format = "the tool result's content as returned by the server, isError results included"


class WebDomain(Domain):
    name = "web"
    description = "a web browser showing a web application"
    action_format = ("one BrowserGym action such as click('12'), fill('31', 'text'), goto('url'), "
                     "scroll(0, 200), go_back(), select_option('7', 'value')")
    observation_format = "the page's accessibility tree, one node per line with its [bid], role and name"

    def check_format(self, observation: str) -> float:
        lines = [l for l in observation.splitlines() if l.strip()]
        return sum("[" in l for l in lines) / len(lines) if lines else 0.0


class OsDomain(Domain):
    name = "os"
    description = "a Linux desktop with graphical applications"
    action_format = "pyautogui Python code, e.g. pyautogui.click(120, 48) or pyautogui.typewrite('x')"
    observation_format = "the linearised accessibility tree: tag, name, text, position and size per node"


class AndroidDomain(Domain):
    name = "android"
    description = "an Android phone"
    action_format = ('a JSON action such as {"action_type": "click", "x": 540, "y": 1200}, '
                     '{"action_type": "input_text", "text": "..."} or {"action_type": "navigate_back"}')
    observation_format = "the screen's UI element tree with class, text, resource id and bounds per element"

    def check_format(self, observation: str) -> float:
        return 1.0 if observation.strip() else 0.0
