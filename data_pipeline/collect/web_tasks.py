"""Scripted browsing tasks on the Trac project: navigate, search, file and edit tickets, edit
the wiki, use the history, and make the mistakes agents make (a stale bid, typing into a link,
leaving the site).

Element ids (bids) exist only once a page is rendered, so a script step that targets an element
names it by role and accessible name (`On("link", "NEW TICKET")`) and is turned into the concrete
BrowserGym action (`click('55')`) from the latest observation when the agent takes that step;
the trajectory records the concrete action. Parameters come from random.Random(f"{seed}:{index}").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from data_pipeline.collect.base import ScriptedTask

SUMMARIES = ("Export fails for reports with unicode titles", "Dark mode for the dashboard",
             "Password reset mail is never sent", "Slow search on large wikis",
             "Add keyboard shortcuts to the ticket form", "Crash when a milestone has no due date",
             "Typo in the roadmap page header", "Make the timeline filter remember its state")
WORDS = ("backup", "timeline", "password", "report", "screenshots", "search", "release", "CSV")
PAGES = ("TeamHandbook", "ReleaseChecklist")
NEW_PAGES = ("MeetingNotes", "OnboardingGuide", "DeployRunbook", "StyleGuide", "IncidentLog")
BASE = "http://127.0.0.1:{port}"


@dataclass(frozen=True)
class On:
    """A step on the element of `role` whose name starts with `name` (the n-th such, from 0)."""
    action: str           # click | fill | select_option | press | hover
    role: str
    name: str
    value: str | None = None
    nth: int = 0

    def resolve(self, tree: str) -> str:
        pattern = re.compile(r"^\s*\[(\d+)\] " + re.escape(self.role) + r" (['\"])"
                             + re.escape(self.name), re.M)
        found = [m.group(1) for m in pattern.finditer(tree)]
        # Not on the page (the script and the page disagree): a dead bid, the error is data.
        bid = found[self.nth] if len(found) > self.nth else "9999"
        return f"{self.action}({bid!r})" if self.value is None else f"{self.action}({bid!r}, {self.value!r})"


class Script(list):
    """Actions that resolve `On` steps against the current page when the agent reads them."""

    def __init__(self, steps, tree: Callable[[], str]):
        super().__init__(steps)
        self.tree = tree

    def __getitem__(self, i):
        step = super().__getitem__(i)
        if not isinstance(step, On):
            return step.format(port=_port(self.tree()))
        return step.resolve(self.tree())

    def __iter__(self):  # resolved lazily too, one step at a time
        return (self[i] for i in range(len(self)))


def _port(tree: str) -> str:
    m = re.search(r"^URL: http://127\.0\.0\.1:(\d+)", tree)
    return m.group(1) if m else "0"


def goto(path: str) -> str:
    return f"goto('{BASE}{path}')"


def browse_tickets(rng):
    n = rng.randint(1, 6)
    return (f"Open the list of active tickets, then read ticket #{n}.",
            [On("click", "link", "VIEW TICKETS"), On("click", "link", "{1} Active Tickets"),
             goto(f"/ticket/{n}"), "go_back()", "click('9999')", "scroll(0, 400)"], {"ticket": n})


def create_ticket(rng):
    summary, kind = rng.choice(SUMMARIES), rng.choice(["defect", "enhancement", "task"])
    prio = rng.choice(["blocker", "critical", "major", "minor", "trivial"])
    return (f"File a new {kind} ticket '{summary}' with priority {prio}.",
            [On("click", "link", "NEW TICKET"), On("fill", "textbox", "Summary", summary),
             On("fill", "textbox", "Description", f"Steps to reproduce: {rng.choice(WORDS)} page."),
             On("select_option", "combobox", "Type", kind),
             On("select_option", "combobox", "Priority", prio),
             On("fill", "link", "Bold text", "oops"),  # typing into a link fails
             On("click", "button", "Create ticket")],
            {"summary": summary, "type": kind, "priority": prio})


def search_site(rng):
    word = rng.choice(WORDS)
    return (f"Search the project for '{word}' and open the first ticket found, then search for "
            "something that does not exist.",
            [goto("/search"), On("fill", "textbox", "Search", word),
             On("press", "textbox", "Search", "Enter"), On("click", "link", "#"),
             "go_back()", On("fill", "textbox", "Search", "zzxqvnonexistent"),
             On("press", "textbox", "Search", "Enter"), "click('9999')"], {"query": word})


def edit_wiki(rng):
    page, line = rng.choice(PAGES), f"Updated by the {rng.choice(WORDS)} team."
    return (f"Add the line '{line}' to the wiki page {page}.",
            [goto(f"/wiki/{page}"), On("click", "button", "Edit this page"),
             On("fill", "textbox", "", f"= {page} =\n{line}"), On("click", "button", "Submit changes"),
             On("click", "link", "History"), "click('123456')"], {"page": page, "line": line})


def create_wiki_page(rng):
    page = rng.choice(NEW_PAGES)
    return (f"Create the wiki page {page} with a short outline.",
            [goto(f"/wiki/{page}"), On("click", "button", "Create this page"),
             On("fill", "textbox", "", f"= {page} =\n * owner: {rng.choice(['bob', 'carol'])}"),
             On("click", "button", "Submit changes"), goto("/wiki/TitleIndex"), "go_back()",
             goto("/wiki/NoSuchPageAtAll" + str(rng.randint(1, 99)))], {"page": page})


def comment_ticket(rng):
    n, text = rng.randint(1, 6), f"Seen again on {rng.choice(['Firefox', 'Chrome', 'Safari'])}."
    return (f"Add the comment '{text}' to ticket #{n} and mark it {rng.choice(['minor', 'major'])}.",
            [goto(f"/ticket/{n}"), On("fill", "textbox", "You may use WikiFormatting", text),
             On("click", "button", "Submit changes"), "scroll(0, -300)", "press('9999', 'Enter')"],
            {"ticket": n, "comment": text})


def navigate_history(rng):
    first, second = rng.sample(["TIMELINE", "ROADMAP", "VIEW TICKETS", "WIKI"], 2)
    return (f"Visit {first.title()} and {second.title()}, go back and forward, then try an outside link.",
            [On("click", "link", first), On("click", "link", second), "go_back()", "go_forward()",
             "scroll(0, 600)", "goto('https://trac.edgewall.org/')", On("hover", "link", "Help/Guide")],
            {"pages": [first, second]})


def roadmap_milestone(rng):
    ms = f"milestone{rng.randint(1, 4)}"
    return (f"Find the open tickets of {ms} from the roadmap.",
            [On("click", "link", "ROADMAP"), On("click", "link", f"Milestone: {ms}"), "noop(200)",
             On("click", "link", "Total number of tickets"), "click('9999')", goto("/milestone/milestone9"), "go_back()"],
            {"milestone": ms})


TASKS: dict[str, Callable] = {f.__name__: f for f in (
    browse_tickets, create_ticket, search_site, edit_wiki, create_wiki_page, comment_ticket,
    navigate_history, roadmap_milestone)}


def make_task(index: int, seed: int, tree: Callable[[], str] = lambda: "") -> ScriptedTask:
    """Task `index` cycles through the library; `tree()` is the environment's current page."""
    name = list(TASKS)[index % len(TASKS)]
    instruction, steps, params = TASKS[name](random.Random(f"{seed}:{index}"))
    return ScriptedTask(name, instruction, Script(steps, tree), params)
