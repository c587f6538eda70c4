"""The web domain: Debian's chromium, driven by Playwright, on a Trac project served on 127.0.0.1.

Observation: the page's accessibility tree (Chrome's, over CDP), one node per line, indented by
depth, each element carrying the `bid` this module writes into the DOM before every snapshot
(BrowserGym-style): `[12] link 'New Ticket'`. Actions: BrowserGym's high-level action strings,
click('12'), fill('31', 'text'), goto(url), scroll(0, 200), go_back(), go_forward(),
select_option('7', 'value'), press('12', 'Enter'), hover('5'), noop(). They are parsed with
`ast` (literals only, never evaluated). An action on a missing element, a timeout or a blocked
host is an error observation: "Error: ..." followed by the page as it then is.

The browser reaches 127.0.0.1 only (every other request is aborted by Playwright routing); no
agent code runs (actions are a closed set of browser operations), so there is no sandbox beyond
the browser's; each episode gets a fresh browser context and a fresh Trac project.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from data_pipeline.collect.base import ActionError, Collector, Environment, ScriptedTask
from data_pipeline.collect.web_app import TracApp
from lwm.domains.base import without_reasoning
from lwm.domains.web import ACTIONS, WebDomain, parse_browser_action

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# Numbers every element in document order (frames included) so the tree can name them.
_MARK_JS = """() => { let n = 0;
  const mark = (doc) => { for (const el of doc.querySelectorAll('*')) {
      el.setAttribute('bid', String(n++));
      if (el.tagName === 'IFRAME') { try { mark(el.contentDocument); } catch (e) {} } } };
  mark(document); return n; }"""
_SKIP_ROLES = {"none", "generic", "InlineTextBox", "LineBreak", "ignored"}
_PROPS = ("checked", "selected", "expanded", "disabled", "required", "focused")


def _linearise(nodes: list[dict], bids: dict[int, str], max_lines: int) -> str:
    """CDP AX nodes -> `[bid] role 'name'` lines, indented by depth; unnamed containers fold."""
    by_id = {n["nodeId"]: n for n in nodes}
    lines: list[str] = []

    def visit(node, depth, parent_name=""):
        role = node.get("role", {}).get("value", "")
        name = (node.get("name", {}) or {}).get("value", "") or ""
        # Text that only repeats its parent's name (a link's label) adds nothing; the layout
        # boxes below text nodes never do.
        shown = not node.get("ignored") and role != "InlineTextBox" \
            and not (role in _SKIP_ROLES and not name) \
            and not (role == "StaticText" and (not name.strip() or name == parent_name))
        if shown:
            bid = bids.get(node.get("backendDOMNodeId"))
            parts = [f"[{bid}] {role}" if bid is not None and role != "StaticText" else role]
            parts[0] += f" {name.strip()!r}" if name.strip() or role != "StaticText" else ""
            props = [f"value={v!r}" for v in [(node.get("value") or {}).get("value")] if v not in (None, "")]
            for p in node.get("properties", []):
                if p["name"] in _PROPS and p["value"].get("value") not in (False, None, "false"):
                    props.append(p["name"] if p["value"].get("value") in (True, "true")
                                 else f"{p['name']}={p['value'].get('value')}")
            lines.append("\t" * depth + ", ".join(parts + props))
        for child in node.get("childIds", []):
            if child in by_id:
                visit(by_id[child], depth + shown, name if shown else parent_name)
    root = next((n for n in nodes if not n.get("parentId")), None)
    if root:
        visit(root, 0)
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more nodes)"]
    return "\n".join(lines)


_PLAYWRIGHT = None


def _playwright():
    """One Playwright driver per process: its sync API allows only one per thread."""
    global _PLAYWRIGHT
    if _PLAYWRIGHT is None:
        from playwright.sync_api import sync_playwright
        _PLAYWRIGHT = sync_playwright().start()
    return _PLAYWRIGHT


class WebEnv(Environment):
    tools: list[dict] = []

    def __init__(self, cfg):
        self.cfg = cfg
        self.app = TracApp(cfg)
        self.browser = _playwright().chromium.launch(executable_path=cfg.chromium, args=CHROMIUM_FLAGS,
                                                headless=True)
        self.context = self.page = None
        self.last_tree = ""

    def reset(self, task: ScriptedTask | None = None) -> str:
        self.close()
        base = self.app.start()
        self.context = self.browser.new_context(
            viewport={"width": self.cfg.viewport_width, "height": self.cfg.viewport_height})
        self.context.route("**/*", self._only_loopback)
        self.context.set_default_timeout(self.cfg.action_timeout_s * 1000)
        self.page = self.context.new_page()
        self.page.goto(base + "/wiki")
        return self.observe()

    @staticmethod
    def _only_loopback(route):
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1" or route.request.url.startswith(("data:", "about:")):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    def observe(self) -> str:
        from playwright.sync_api import Error as PlaywrightError
        for attempt in range(3):  # a navigation in flight replaces the document under us
            try:
                self.page.wait_for_load_state("load")
                self.page.evaluate(_MARK_JS)
                break
            except PlaywrightError:
                if attempt == 2:
                    raise
                self.page.wait_for_timeout(100)
        cdp = self.context.new_cdp_session(self.page)
        try:
            dom = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})
            bids: dict[int, str] = {}
            stack = [dom["root"]]
            while stack:
                n = stack.pop()
                attrs = n.get("attributes", [])
                if "bid" in attrs[::2]:
                    bids[n["backendNodeId"]] = attrs[attrs[::2].index("bid") * 2 + 1]
                stack += n.get("children", []) + ([n["contentDocument"]] if "contentDocument" in n else [])
            nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
        finally:
            cdp.detach()
        tree = _linearise(nodes, bids, self.cfg.max_obs_lines)
        self.last_tree = f"URL: {self.page.url}\n{tree}"
        return self.last_tree

    def step(self, action: str) -> str:
        name, args = parse_browser_action(action)
        from playwright.sync_api import Error as PlaywrightError
        try:
            self._do(name, args)
            error = ""
        except _MissingElement as e:
            error = str(e)
        except PlaywrightError as e:
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
            error = re.sub(r"\s*Call log:.*", "", error)
        try:
            obs = self.observe()
        except PlaywrightError as e:  # a page that fails to load is still the agent's problem
            obs = f"URL: {self.page.url}\n(the page could not be read: {str(e).splitlines()[0]})"
        return f"Error: {error}\n\n{obs}" if error else obs

    def _el(self, bid: str):
        loc = self.page.locator(f'[bid="{bid}"]')
        if not re.fullmatch(r"\d+", bid) or loc.count() == 0:
            raise _MissingElement(f"no element with bid '{bid}' on this page.")
        return loc.first

    def _do(self, name: str, args: list) -> None:
        p = self.page
        if name == "goto":
            p.goto(args[0])
        elif name == "go_back":
            p.go_back()
        elif name == "go_forward":
            p.go_forward()
        elif name == "scroll":
            p.mouse.wheel(args[0], args[1])
        elif name == "noop":
            p.wait_for_timeout(min(args[0] if args else 1000, 5000))
        elif name == "click":
            self._el(args[0]).click()
        elif name == "dblclick":
            self._el(args[0]).dblclick()
        elif name == "hover":
            self._el(args[0]).hover()
        elif name == "fill":
            self._el(args[0]).fill(args[1])
        elif name == "clear":
            self._el(args[0]).clear()
        elif name == "focus":
            self._el(args[0]).focus()
        elif name == "press":
            self._el(args[0]).press(args[1])
        elif name == "select_option":
            self._el(args[0]).select_option(args[1])

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
            self.context = self.page = None
        self.app.stop()

    def shutdown(self) -> None:
        self.close()
        self.browser.close()


class _MissingElement(Exception):
    pass


_AGENT_PROMPT = """You are an agent using {description} (a Trac issue tracker with a wiki).
Each turn you see the page's accessibility tree: one element per line, [bid] role 'name'.
Reply with exactly one action, {action_format}, and nothing else. Other actions: hover('5'),
press('12', 'Enter'), go_forward(), noop(). Reply DONE when the task is complete."""
_CALL = re.compile(r"\b(" + "|".join(ACTIONS) + r")\(.*?\)(?=\s*$|\s*\n|`)", re.M | re.S)


class WebCollector(Collector):
    domain = "web"

    def __init__(self, collect_cfg):
        super().__init__(collect_cfg)
        self._env: WebEnv | None = None

    def environment(self) -> WebEnv:
        self._env = WebEnv(self.cfg.web)
        return self._env

    def task(self, index: int, seed: int) -> ScriptedTask:
        from data_pipeline.collect.web_tasks import make_task
        return make_task(index, seed, lambda: self._env.last_tree if self._env else "")

    def agent_prompt(self) -> str:
        d = WebDomain()
        return _AGENT_PROMPT.format(description=d.description, action_format=d.action_format)

    def parse_reply(self, reply: str) -> str | None:
        text = without_reasoning(reply)
        for m in _CALL.finditer(text):
            try:
                parse_browser_action(m.group(0))
                return m.group(0).strip()
            except ActionError:
                continue
        return "" if re.search(r"^\s*DONE\b", text, re.M) else None
