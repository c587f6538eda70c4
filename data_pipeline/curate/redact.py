"""Redaction of secrets and personal data before anything reaches a shard.

Each rule replaces a match with a typed placeholder (`<API_KEY>`, `<EMAIL>`, ...) so a world
model still learns that a key or an address appears there, never which one. Rules are ordered:
private-key blocks and URL credentials first, since their bodies would match later rules.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

from lwm.schema import Step, Trajectory

_RULES: list[tuple[str, re.Pattern, str]] = [
    ("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
        re.S), "<PRIVATE_KEY>"),
    # scheme://user:password@host keeps the user and host, drops the password
    ("url_password", re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)"),
     r"\g<head><PASSWORD>"),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "<TOKEN>"),
    ("api_key", re.compile(
        r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"       # OpenAI / Anthropic style
        r"|AKIA[0-9A-Z]{16}"                              # AWS access key id
        r"|gh[pousr]_[A-Za-z0-9]{30,}"                    # GitHub tokens
        r"|github_pat_[A-Za-z0-9_]{30,}"
        r"|glpat-[A-Za-z0-9_-]{20,}"                      # GitLab
        r"|xox[abposr]-[A-Za-z0-9-]{10,}"                 # Slack
        r"|AIza[0-9A-Za-z_-]{35}"                         # Google API key
        r"|hf_[A-Za-z0-9]{30,}"                           # Hugging Face
        r"|sk_live_[A-Za-z0-9]{20,}|rk_live_[A-Za-z0-9]{20,})"),  # Stripe
     "<API_KEY>"),
    ("bearer", re.compile(r"(?i)(?P<head>\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\g<head><TOKEN>"),
    # KEY=value / "password": "value" assignments whose name says secret
    ("secret_assignment", re.compile(
        r"(?i)(?P<head>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)"
        r"[\w.-]*[\"']?\s*[:=]\s*[\"']?)(?!<)[^\s\"',;]{6,}"), r"\g<head><SECRET>"),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "<EMAIL>"),
]


def redact_text(text: str, counts: Counter | None = None) -> str:
    for name, pattern, repl in _RULES:
        text, n = pattern.subn(repl, text)
        if n and counts is not None:
            counts[name] += n
    return text


def redact_trajectory(traj: Trajectory, counts: Counter | None = None) -> Trajectory:
    """A copy with every free-text field redacted (tool definitions are schema, left as is)."""
    r = lambda s: redact_text(s, counts)  # noqa: E731
    return replace(traj, task=r(traj.task), initial_observation=r(traj.initial_observation),
                   steps=[Step(r(s.action), r(s.observation)) for s in traj.steps])
