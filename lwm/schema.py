"""The trajectory: one versioned record format for every domain.

A trajectory is one JSON line. Actions and observations are strings exactly as the agent
emitted them and the environment returned them; a domain decides how they are rendered.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1


class TrajectoryError(ValueError):
    """A record that does not follow the schema; names the file, record and field."""

    def __init__(self, reason: str, field_name: str, source: str = "", record: int | str = ""):
        self.reason, self.field, self.source, self.record = reason, field_name, source, record
        where = f"{source}:{record}: " if source else ""
        super().__init__(f"{where}field '{field_name}': {reason}")


@dataclass
class Step:
    action: str
    observation: str


@dataclass
class Trajectory:
    id: str
    domain: str
    source: str
    steps: list[Step]
    task: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    initial_observation: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, rec: Any, source: str = "", record: int | str = "") -> "Trajectory":
        validate(rec, source, record)
        return cls(
            id=rec["id"], domain=rec["domain"], source=rec["source"],
            steps=[Step(s["action"], s["observation"]) for s in rec["steps"]],
            task=rec.get("task", ""), tools=list(rec.get("tools", [])),
            initial_observation=rec.get("initial_observation", ""),
            meta=dict(rec.get("meta", {})),
            schema_version=rec.get("schema_version", SCHEMA_VERSION),
        )


_REQUIRED = {"id": str, "domain": str, "source": str, "steps": list}
_OPTIONAL = {"task": str, "tools": list, "initial_observation": str, "meta": dict,
             "schema_version": int}


def validate(rec: Any, source: str = "", record: int | str = "", domains=None) -> None:
    """Raise TrajectoryError on the first problem. `domains`: known domain names, if checked."""
    def fail(field_name: str, reason: str):
        raise TrajectoryError(reason, field_name, source, record)

    if not isinstance(rec, dict):
        fail("<record>", f"expected a JSON object, got {type(rec).__name__}")
    for key, typ in _REQUIRED.items():
        if key not in rec:
            fail(key, "missing")
        if not isinstance(rec[key], typ):
            fail(key, f"expected {typ.__name__}, got {type(rec[key]).__name__}")
    for key, typ in _OPTIONAL.items():
        if key in rec and not isinstance(rec[key], typ) or (typ is int and isinstance(rec.get(key), bool)):
            fail(key, f"expected {typ.__name__}, got {type(rec[key]).__name__}")
    unknown = set(rec) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        fail(sorted(unknown)[0], "unknown field")
    version = rec.get("schema_version", SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        fail("schema_version", f"version {version} is newer than this reader ({SCHEMA_VERSION})")
    if not rec["id"]:
        fail("id", "empty")
    if domains is not None and rec["domain"] not in domains:
        fail("domain", f"unknown domain '{rec['domain']}' (known: {', '.join(sorted(domains))})")
    if not rec["steps"]:
        fail("steps", "no steps")
    for i, step in enumerate(rec["steps"]):
        if not isinstance(step, dict):
            fail(f"steps[{i}]", "expected an object with action and observation")
        for key in ("action", "observation"):
            if not isinstance(step.get(key), str):
                fail(f"steps[{i}].{key}", "missing or not a string")
        if set(step) - {"action", "observation"}:
            fail(f"steps[{i}]", f"unknown field '{sorted(set(step) - {'action', 'observation'})[0]}'")
    for i, tool in enumerate(rec.get("tools", [])):
        if not isinstance(tool, dict):
            fail(f"tools[{i}]", "expected an object")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object or TrajectoryError) for each non-empty line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, TrajectoryError(f"invalid JSON ({e.msg} at column {e.colno})",
                                              "<line>", str(path), lineno)


def load_trajectories(path: str | Path, domains=None) -> list[Trajectory]:
    """Strict loader: the first bad record raises, naming file, line and field."""
    out = []
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, TrajectoryError):
            raise rec
        validate(rec, str(path), lineno, domains)
        out.append(Trajectory.from_dict(rec, str(path), lineno))
    return out
