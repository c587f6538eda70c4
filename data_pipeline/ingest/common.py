"""What every ingest format shares: reading its files, and a rejected record's reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data_pipeline.curate.redact import redact_text
from lwm.schema import MAX_DEPTH, TrajectoryError, encodable, jsonl_lines, parse_line


def malformed(where: str, record: int | str, e: Exception) -> "Reject":
    """A record a converter tripped on (lwm.schema.MALFORMED): rejected, saying so; the import
    goes on."""
    return Reject(where, record, "<record>", f"malformed ({type(e).__name__}: {e})")


@dataclass
class Reject:
    """A record that cannot become a trajectory: where it is, which field, why."""
    source: str
    record: int | str
    field: str
    reason: str

    def as_dict(self) -> dict:
        return {"source": self.source, "record": self.record, "field": self.field,
                "reason": self.reason}

    def redacted(self) -> "Reject":
        """The reject as it may be written or printed: its record, field and reason can quote
        the record (an id, a key, a value), so they go through redaction, and lone surrogates
        become U+FFFD."""
        def scrub(text):
            return encodable(redact_text(text)) if isinstance(text, str) else text
        return Reject(self.source, scrub(self.record), scrub(self.field), scrub(self.reason))


def files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """`path` itself, or the files under it with one of `suffixes`, in a stable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"ingest.path {path} does not exist")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def jsonl_records(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(file, line, object or Reject) for every non-blank line of every .jsonl/.json file;
    a .json file holding a list yields its items (record = the item's index). Files are read
    as bytes and decoded line by line: a line that is not UTF-8, not JSON, too long or holds a
    lone surrogate is one Reject, never the end of the import."""
    for f in files(path, (".jsonl", ".json")):
        if f.suffix == ".json":
            data = parsed(f.read_bytes(), f, 0, "<file>")
            if isinstance(data, Reject):
                yield str(f), 0, data
                continue
            for i, item in enumerate(data if isinstance(data, list) else [data]):
                yield str(f), i, item
            continue
        for lineno, _, raw in jsonl_lines(f):
            yield str(f), lineno, parsed(raw, f, lineno)


def parsed(raw: bytes | TrajectoryError, f: Path, record: int, field: str = "<line>") -> Any:
    """A line's (or a file's) JSON value, or the Reject that says why it has none (nesting past
    MAX_DEPTH included: converters walk records of any layout)."""
    try:
        if isinstance(raw, TrajectoryError):
            raise raw
        return parse_line(raw, str(f), record, field, max_depth=MAX_DEPTH)
    except TrajectoryError as e:
        return Reject(str(f), record, e.field, e.reason)
