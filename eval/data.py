"""Eval sets in AgentWorldBench's JSONL layout, ours or the public benchmark's: one file, or
every *_test.jsonl of a folder. lwm/endpoints/sample.py views each record as chat messages, a
reference observation and the history."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lwm.endpoints.sample import domain_of

_FIELDS = ("task", "id", "prompt", "response")


def load_eval_set(source: Path, max_samples: int) -> list[dict]:
    """Records from a file or every *_test.jsonl in a folder; at most max_samples per domain
    (0 = all), in file order. Ids become strings (the benchmark's are integers)."""
    files = sorted(source.glob("*_test.jsonl")) if source.is_dir() else [source]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"eval: no *_test.jsonl files in {source}")
    records, per_domain = [], defaultdict(int)
    for path in files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from e
                missing = [k for k in _FIELDS if k not in rec]
                if missing:
                    raise ValueError(f"{path}:{lineno}: field '{missing[0]}' missing "
                                     "(AgentWorldBench layout expected)")
                domain = domain_of(rec)
                if max_samples and per_domain[domain] >= max_samples:
                    continue
                per_domain[domain] += 1
                rec["id"] = str(rec["id"])
                records.append(rec)
    return records
