"""What every ingest format shares: reading its files, and a rejected record's reason."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


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


def files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """`path` itself, or the files under it with one of `suffixes`, in a stable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"ingest.path {path} does not exist")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def jsonl_records(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(file, line, object or Reject) for every non-empty line of every .jsonl/.json file;
    a .json file holding a list yields its items (record = the item's index)."""
    for f in files(path, (".jsonl", ".json")):
        text = f.read_text(encoding="utf-8")
        if f.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                yield str(f), 0, Reject(str(f), 0, "<file>", f"invalid JSON ({e.msg})")
                continue
            for i, item in enumerate(data if isinstance(data, list) else [data]):
                yield str(f), i, item
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield str(f), lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield str(f), lineno, Reject(str(f), lineno, "<line>",
                                             f"invalid JSON ({e.msg} at column {e.colno})")
