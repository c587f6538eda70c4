"""The example domain's collector (optional): a simulated Helpdesk behind the same three tools.

`TicketsDomain.collector` names this class, so `lwm collect data=tickets` runs it like a
built-in collector (scripted tasks, or an LLM agent with policy=openai). Each episode gets a
fresh ticket database drawn from the task's seed; the chat logs in chats.jsonl are of this
system too.
"""

from __future__ import annotations

import json
import random
import re

from data_pipeline.collect.base import Collector, Environment, ScriptedTask
from examples.tickets.domain import TOOL_NAMES, TicketsDomain
from lwm.domains.tools import extract_tool_call, parse_tool_call

STATUSES = ("open", "pending", "resolved", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
AGENTS = ("dana", "lee", "priya", "marco", "sven")
CUSTOMERS = ("Acme Freight", "Birchwood Dental", "Copperline Bank", "Dunmore Schools",
             "Elm Street Bakery", "Fjord Analytics", "Greenvale Clinic", "Harbor Logistics")
SUBJECTS = (
    ("VPN drops every 20 minutes", "Remote staff lose the VPN tunnel roughly every 20 minutes since Monday."),
    ("Invoice PDF shows wrong VAT rate", "The March invoice lists VAT at 19% instead of 21%."),
    ("Cannot reset password", "The reset link in the email returns 'token expired' immediately."),
    ("Printer on floor 3 offline", "The shared printer near the kitchen shows offline for all laptops."),
    ("Export to CSV times out", "Exporting the yearly report to CSV fails after 60 seconds."),
    ("New hire needs mailbox", "Please create a mailbox and calendar for a new hire starting on the 14th."),
    ("Duplicate charges on card", "Our card was charged twice for the April subscription."),
    ("Dashboard loads blank", "The analytics dashboard shows an empty page in Firefox."),
    ("SSO login loops", "Signing in with SSO redirects back to the login page forever."),
    ("Backup job failed overnight", "The nightly backup reported 'disk quota exceeded' at 02:14."),
    ("Phone system drops calls", "Inbound calls disconnect after the second transfer."),
    ("Request: add user to billing group", "Please give the new accountant access to the billing group."),
    ("Slow file share", "Opening files on the S: drive takes over a minute."),
    ("Calendar invites arrive late", "Meeting invites reach external guests hours after sending."),
    ("API rate limit too low", "Our integration hits 429 errors at about 50 requests a minute."),
    ("Laptop battery swelling", "A team laptop's battery has swollen and the case no longer closes."),
)
COMMENTS = ("Asked the customer for a screenshot.", "Reproduced on our side, investigating.",
            "Waiting on the vendor's reply.", "Applied the workaround from the wiki.",
            "Customer confirmed the fix works.", "Escalated to the network team.")


def _stamp(rng: random.Random, day: int) -> str:
    return f"2026-03-{day:02d}T{rng.randrange(7, 19):02d}:{rng.randrange(60):02d}:00Z"


def make_tickets(seed: int) -> dict[str, dict]:
    """A fresh ticket database: 8-11 tickets drawn from the seed."""
    rng = random.Random(f"tickets:{seed}")
    tickets = {}
    picked = rng.sample(range(len(SUBJECTS)), rng.randrange(8, 12))
    for i, number in zip(picked, sorted(rng.sample(range(1000, 2000), len(picked)))):
        subject, text = SUBJECTS[i]
        tid = f"HD-{number}"
        day = rng.randrange(1, 20)
        comments = [{"author": rng.choice(AGENTS), "at": _stamp(rng, day + 1), "text": rng.choice(COMMENTS)}
                    for _ in range(rng.randrange(0, 3))]
        tickets[tid] = {"id": tid, "subject": subject, "description": text,
                        "customer": rng.choice(CUSTOMERS), "status": rng.choice(STATUSES),
                        "priority": rng.choice(PRIORITIES), "assignee": rng.choice(AGENTS),
                        "created": _stamp(rng, day), "updated": _stamp(rng, day + 2), "comments": comments}
    return tickets


TOOLS = [
    {"type": "function", "function": {
        "name": "search_tickets", "description": "Find tickets; every filter given must match. Newest first.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "words in the subject or description"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "customer": {"type": "string"}, "assignee": {"type": "string"},
            "limit": {"type": "integer", "default": 10}}}}},
    {"type": "function", "function": {
        "name": "get_ticket", "description": "One ticket with its description and comments.",
        "parameters": {"type": "object", "properties": {"ticket_id": {"type": "string"}},
                       "required": ["ticket_id"]}}},
    {"type": "function", "function": {
        "name": "update_ticket",
        "description": "Change status, priority or assignee and/or add a comment; returns what changed.",
        "parameters": {"type": "object", "properties": {
            "ticket_id": {"type": "string"}, "status": {"type": "string", "enum": list(STATUSES)},
            "priority": {"type": "string", "enum": list(PRIORITIES)}, "assignee": {"type": "string"},
            "comment": {"type": "string"}}, "required": ["ticket_id"]}}},
]


def _summary(t: dict) -> dict:
    return {k: t[k] for k in ("id", "subject", "customer", "status", "priority", "assignee", "updated")}


class TicketSystem(Environment):
    """The Helpdesk API over an in-memory database; a bad request is answered, not raised."""

    tools = TOOLS

    def __init__(self):
        self.tickets: dict[str, dict] = {}
        self.clock = 0

    def reset(self, task: ScriptedTask | None = None) -> str:
        self.tickets = make_tickets(task.params["db"] if task else 0)
        self.clock = 0
        return ""  # a tool domain: the agent starts from no visible state

    def step(self, action: str) -> str:
        name, args = parse_tool_call(action)  # a malformed call: ActionError (quarantined)
        try:
            result = getattr(self, name)(**args) if name in TOOL_NAMES else {
                "error": f"unknown tool '{name}' (tools: {', '.join(TOOL_NAMES)})"}
        except TypeError as e:
            result = {"error": f"bad arguments for {name}: {e}"}
        return json.dumps(result, ensure_ascii=False)

    def search_tickets(self, query: str = "", status: str = "", customer: str = "", assignee: str = "",
                       limit: int = 10) -> dict:
        if status and status not in STATUSES:
            return {"error": f"invalid status '{status}' (allowed: {', '.join(STATUSES)})"}
        words = query.lower().split()
        found = [t for t in self.tickets.values()
                 if all(w in (t["subject"] + " " + t["description"]).lower() for w in words)
                 and (not status or t["status"] == status)
                 and (not customer or customer.lower() in t["customer"].lower())
                 and (not assignee or t["assignee"] == assignee.lower())]
        found.sort(key=lambda t: t["updated"], reverse=True)
        return {"total": len(found), "tickets": [_summary(t) for t in found[:limit]]}

    def get_ticket(self, ticket_id: str) -> dict:
        if ticket_id not in self.tickets:
            return {"error": f"ticket {ticket_id} not found"}
        return self.tickets[ticket_id]

    def update_ticket(self, ticket_id: str, status: str = "", priority: str = "", assignee: str = "",
                      comment: str = "") -> dict:
        t = self.tickets.get(ticket_id)
        if t is None:
            return {"error": f"ticket {ticket_id} not found"}
        for key, value, allowed in (("status", status, STATUSES), ("priority", priority, PRIORITIES),
                                    ("assignee", assignee, AGENTS)):
            if value and value not in allowed:
                return {"error": f"invalid {key} '{value}' (allowed: {', '.join(allowed)})"}
        changed = {}
        for key, value in (("status", status), ("priority", priority), ("assignee", assignee)):
            if value and value != t[key]:
                changed[key] = [t[key], value]
                t[key] = value
        self.clock += 1
        t["updated"] = f"2026-03-28T09:{self.clock:02d}:00Z"
        if comment:
            t["comments"].append({"author": "assistant", "at": t["updated"], "text": comment})
            changed["comments"] = len(t["comments"])
        return {"ok": True, "changed": changed, "ticket": _summary(t)}


def _call(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def make_task(index: int, seed: int) -> ScriptedTask:
    """A scripted task on the database of (seed, index): look up, escalate, close or reassign."""
    rng = random.Random(f"task:{seed}:{index}")
    db = seed * 100003 + index
    tickets = list(make_tickets(db).values())
    t = rng.choice(tickets)
    word = t["subject"].split()[0]
    kind = ("status", "escalate", "close", "reassign", "typo")[index % 5]
    if kind == "status":
        instruction = f"What is going on with {t['id']}? Add a note that the customer asked for an update."
        actions = [_call("get_ticket", ticket_id=t["id"]),
                   _call("update_ticket", ticket_id=t["id"], comment="Customer asked for an update.")]
    elif kind == "escalate":
        instruction = f"The '{t['subject']}' issue is hurting {t['customer']}; make it urgent."
        actions = [_call("search_tickets", query=word, customer=t["customer"]),
                   _call("get_ticket", ticket_id=t["id"]),
                   _call("update_ticket", ticket_id=t["id"], priority="urgent",
                         comment=f"Escalated: {t['customer']} reports business impact.")]
    elif kind == "close":
        done = [x for x in tickets if x["status"] == "resolved"][:3] or [t]
        instruction = "Close every resolved ticket, with a short closing note."
        actions = [_call("search_tickets", status="resolved")] + [
            _call("update_ticket", ticket_id=x["id"], status="closed", comment="Resolved and confirmed; closing.")
            for x in done]
    elif kind == "reassign":
        other = rng.choice([a for a in AGENTS if a != t["assignee"]])
        instruction = f"{t['assignee'].title()} is out this week: give their open tickets to {other}."
        mine = [x for x in tickets if x["assignee"] == t["assignee"] and x["status"] == "open"][:3]
        actions = [_call("search_tickets", assignee=t["assignee"], status="open")] + [
            _call("update_ticket", ticket_id=x["id"], assignee=other) for x in mine]
        if not mine:
            actions.append(_call("search_tickets", assignee=t["assignee"]))
    else:
        wrong = t["id"].replace("HD-", "HD-9")
        instruction = f"Please mark ticket {wrong} as pending; I think that was the number."
        actions = [_call("get_ticket", ticket_id=wrong), _call("search_tickets", query=word),
                   _call("update_ticket", ticket_id=t["id"], status="pending")]
    return ScriptedTask(kind, instruction, actions, {"db": db})


_AGENT_PROMPT = """You operate {description}.
Call one tool per reply as JSON: {action_format}. Tools:
{tools}
When the task is done, reply DONE."""


class TicketsCollector(Collector):
    domain = "tickets"

    def environment(self) -> TicketSystem:
        return TicketSystem()

    def task(self, index: int, seed: int) -> ScriptedTask:
        return make_task(index, seed)

    def agent_prompt(self) -> str:
        d = TicketsDomain()
        return _AGENT_PROMPT.format(description=d.description, action_format=d.action_format,
                                    tools=json.dumps(TOOLS, indent=1))

    def parse_reply(self, reply: str) -> str | None:
        action = extract_tool_call(reply, TOOL_NAMES)
        if action is None and re.search(r"^\s*DONE\b", reply, re.M):
            return ""
        return action
