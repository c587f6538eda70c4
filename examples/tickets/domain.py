"""An example user domain: Helpdesk, an in-house ticketing tool, learned from its chat logs.

A `Domain` subclass outside the pipeline's code. Declared once, in configs/data/tickets.yaml
(`data.extra_domains: {tickets: examples.tickets.domain:TicketsDomain}`), it gets every hook:
`lwm ingest` validates its records, prepare's filters treat it as a tool domain (a call to a
tool the record does not declare is filtered out), the judge reads its paragraph, eval scores it
with `check_format` below, and `lwm collect` runs its collector (examples/tickets/collector.py,
a simulated ticket system) when there is no log to import.
"""

from __future__ import annotations

import json

from lwm.domains import ToolDomain

TOOL_NAMES = ("search_tickets", "get_ticket", "update_ticket")


class TicketsDomain(ToolDomain):
    name = "tickets"                 # the key under data.extra_domains, and each record's domain
    description = ("Helpdesk, an in-house ticketing system behind a JSON API: search tickets, read "
                   "one with its comments, change its status, priority or assignee and comment on it")
    action_format = ('a JSON tool call {"name": tool, "arguments": {...}} to search_tickets, '
                     "get_ticket or update_ticket")
    observation_format = ("the API's JSON response: {\"total\", \"tickets\": [summaries]} for a "
                          "search, the full ticket for get_ticket, {\"ok\", \"changed\", \"ticket\"} for "
                          "an update, {\"error\": ...} for a bad request")
    # What the LLM judge holds strictly here (lwm/endpoints/judge.py puts it in its system prompt).
    judge_guide = (
        "Hold strictly: the response is JSON of the shape the call returns; ticket ids, subjects, "
        "customers, statuses, priorities and assignees match what earlier turns showed; an update "
        "reports exactly the fields the call changed, with old and new values; a search returns "
        "only tickets matching every filter; a request for an unknown ticket or an invalid status "
        "or priority is answered with {\"error\": ...} naming it. Judge for plausibility only: "
        "timestamps, the wording of descriptions and comments nobody has shown yet.")
    collector = "examples.tickets.collector:TicketsCollector"  # optional: for `lwm collect`
    demo_actions = ('{"name": "search_tickets", "arguments": {"query": "VPN", "status": "open"}}',
                    '{"name": "get_ticket", "arguments": {"ticket_id": "HD-1042"}}')

    def check_format(self, observation: str) -> float:
        """A JSON object is the API's format; other JSON half of it; anything else none."""
        try:
            value = json.loads(observation)
        except (json.JSONDecodeError, TypeError):
            return 0.0
        return 1.0 if isinstance(value, dict) else 0.5
