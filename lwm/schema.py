"""The trajectory: one versioned record format for every domain.

A trajectory is one JSON line. Actions and observations are strings exactly as the agent
emitted them and the environment returned them; a domain decides how they are rendered.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

SCHEMA_VERSION = 1
# What a line may hold. Lines longer than MAX_RECORD_BYTES (prepare.max_record_bytes' default)
# are refused unread; the free-form fields (meta, tools) nest at most MAX_DEPTH containers deep
# and hold integers of at most 64 bits, as datatrove's JSON writer (orjson) requires.
MAX_RECORD_BYTES = 64 << 20
MAX_DEPTH = 64
_INT_RANGE = (-(1 << 63), 1 << 64)
_LONG_NUMBER = sys.get_int_max_str_digits() or float("inf")  # json.loads refuses longer integers
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What code reading a record of an unexpected shape raises (a string where an object belongs,
# nesting past the parser's depth): readers of untrusted records (ingest's converters, the
# domains' filter hooks in prepare) turn it into that record's rejection, never a crash.
MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


class TrajectoryError(ValueError):
    """A record that does not follow the schema; names the file, record and field. `value`: the
    parsed line, when it parsed but cannot be kept (a lone surrogate)."""

    def __init__(self, reason: str, field_name: str, source: str = "", record: int | str = "",
                 value: Any = None):
        self.reason, self.field, self.source, self.record = reason, field_name, source, record
        self.value = value
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

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict, fields in order, steps as dicts: what dataclasses.asdict
        gives, without its deep copy of tools and meta (they came from parsed JSON already)."""
        rec = {f.name: getattr(self, f.name) for f in fields(self)}
        rec["steps"] = [{"action": s.action, "observation": s.observation} for s in self.steps]
        return rec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

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


def check_values(rec: dict, source: str = "", record: int | str = "") -> None:
    """Raise TrajectoryError when a record that `validate` passed holds what a writer or parser
    downstream cannot take: in the free-form fields (meta, tools) and the version, containers
    nested deeper than MAX_DEPTH or integers beyond 64 bits (datatrove writes with orjson); in an
    action, JSON (which the domains decode) nested deeper or with an integer of more digits
    than Python converts. Cheap for ordinary records: an action is only parsed when it is long
    or holds many brackets."""
    for key in ("meta", "tools", "schema_version"):
        if rec.get(key) and (problem := _unwritable(rec[key], MAX_DEPTH)):
            raise TrajectoryError(problem, key, source, record)
    for i, step in enumerate(rec["steps"]):
        action = step["action"]
        if len(action) > MAX_DEPTH and (len(action) > _LONG_NUMBER or action.count("[")
                                         + action.count("{") > MAX_DEPTH) \
                and (problem := _unparsable(action)):
            raise TrajectoryError(problem, f"steps[{i}].action", source, record)


def _unwritable(value, depth: int, ints: bool = True) -> str | None:
    if isinstance(value, dict):
        values = value.values()
    elif isinstance(value, list):
        values = value
    elif type(value) is int and ints and not _INT_RANGE[0] <= value < _INT_RANGE[1]:
        return "an integer beyond 64 bits"
    else:
        return None
    if depth == 0:
        return f"nested deeper than {MAX_DEPTH} levels"
    for v in values:  # leaves inline: this runs on every record's meta
        t = type(v)
        if t is str or t is float or t is bool or v is None:
            continue
        if t is int:
            if ints and not _INT_RANGE[0] <= v < _INT_RANGE[1]:
                return "an integer beyond 64 bits"
        elif problem := _unwritable(v, depth - 1, ints):
            return problem
    return None


def _unparsable(text: str) -> str | None:
    """Why decoding `text` as JSON fails other than with a JSONDecodeError (which the domains'
    parsers answer), or nests too deep; a tool call's arguments given as a JSON string too."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    except RecursionError:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    except ValueError:
        return "JSON with an integer too long to convert"
    if problem := _unwritable(value, MAX_DEPTH, ints=False):
        return "JSON " + problem
    if isinstance(value, dict) and isinstance(value.get("arguments"), str):
        return _unparsable(value["arguments"])
    return None


def jsonl_lines(path: str | Path, max_bytes: int = MAX_RECORD_BYTES,
                opener: Callable = open) -> Iterator[tuple[int, int, bytes | TrajectoryError]]:
    """(line number, byte offset, line) for each non-blank line of a JSONL file, read as bytes
    so that one bad line costs that line and not the file (parse_line decodes it). A line longer
    than `max_bytes` (0: no limit) is skipped in pieces, never held, and comes as a
    TrajectoryError. Lines end at b"\\n" alone (a "\\r" before it is JSON whitespace)."""
    limit = max_bytes + 1 if max_bytes else -1
    lineno = offset = 0
    with opener(path, "rb") as f:
        while raw := f.readline(limit):
            lineno += 1
            start, offset = offset, offset + len(raw)
            if max_bytes and len(raw) > max_bytes and not raw.endswith(b"\n"):
                while rest := f.readline(1 << 20):
                    offset += len(rest)
                    if rest.endswith(b"\n"):
                        break
                size = offset - start - (rest[-1:] == b"\n")
                yield lineno, start, TrajectoryError(
                    f"line too long ({size} bytes, over the limit of {max_bytes})", "<line>",
                    str(path), lineno)
            elif raw.strip():
                yield lineno, start, raw


def parse_line(raw: bytes, source: str = "", record: int | str = "", field_name: str = "<line>",
               max_depth: int = 0):
    """The JSON value of a line read as bytes, or TrajectoryError (`field_name`) when the line is
    not UTF-8, not JSON, nested too deep for the parser (or deeper than `max_depth`, when set:
    a walk over the value that readers of arbitrary layouts want), or holds text that no UTF-8
    writer can write (a lone surrogate escape, "\\ud800")."""
    def fail(reason: str, value: Any = None):
        raise TrajectoryError(reason, field_name, source, record, value)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"undecodable (byte 0x{raw[e.start]:02x} at position {e.start} is not UTF-8)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:  # the character, not colno: that restarts after the newline
        fail(f"invalid JSON ({e.msg} at column {e.pos + 1})")
    except RecursionError:
        fail(f"nested deeper than {MAX_DEPTH} levels")
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        fail("invalid JSON (an integer too long to convert)")
    if _SURROGATE_ESCAPE.search(raw):  # only such an escape can make a lone surrogate
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            fail(f"unencodable text (a lone surrogate, \\u{ord(e.object[e.start]):04x})", value)
        except RecursionError:
            fail(f"nested deeper than {MAX_DEPTH} levels")
    if max_depth and _unwritable(value, max_depth, ints=False):
        fail(f"nested deeper than {max_depth} levels")
    return value


def encodable(text: str) -> str:
    """`text` with lone surrogates as U+FFFD: what a parsed record's text must become before a
    quarantine or a message can hold it."""
    return _SURROGATE.sub("\ufffd", text)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object or TrajectoryError) for each non-empty line."""
    for lineno, _, raw in jsonl_lines(path):
        if isinstance(raw, TrajectoryError):
            yield lineno, raw
            continue
        try:
            yield lineno, parse_line(raw, str(path), lineno)
        except TrajectoryError as e:
            yield lineno, e


def load_trajectories(path: str | Path, domains=None) -> list[Trajectory]:
    """Strict loader: the first bad record raises, naming file, line and field."""
    out = []
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, TrajectoryError):
            raise rec
        validate(rec, str(path), lineno, domains)
        out.append(Trajectory.from_dict(rec, str(path), lineno))
    return out
