"""What dedup compares, and decontamination against evaluation sets.

Dedup itself is datatrove's MinHash pipeline (data_pipeline/engine.py) over `content_text`.
Decontamination: a training trajectory goes when it shares an id with an eval sample's
trajectory, or enough word n-grams of its observations with the eval observations.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from lwm.schema import Trajectory, TrajectoryError, parse_line

_WORD = re.compile(r"\S+")


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def content_text(traj: Trajectory) -> str:
    return "\n".join([traj.domain, traj.initial_observation]
                     + [f"{s.action}\n{s.observation}" for s in traj.steps])


def ngrams(text: str, n: int) -> set[int]:
    tokens = _WORD.findall(text)
    return {_h64(" ".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)}


class Decontaminator:
    """Eval-set fingerprints: trajectory ids and observation n-grams of AgentWorldBench files."""

    def __init__(self, sources: list[Path], n: int = 13, min_overlap: int = 3):
        self.n, self.min_overlap = n, min_overlap
        self.ids: set[str] = set()
        self.grams: set[int] = set()
        self.files = []
        for source in sources:
            files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
            for path in files:
                self.files.append(str(path))
                with open(path, "rb") as f:
                    for lineno, line in enumerate(f, 1):
                        if line.strip():
                            self._add(self._record(path, lineno, line))

    @staticmethod
    def _record(path: Path, lineno: int, line: bytes) -> dict:
        """One eval record, or a refusal naming it: a line skipped here would leave its
        trajectory in the training data, so an unreadable eval file stops prepare."""
        try:
            rec = parse_line(line, str(path), lineno)
        except TrajectoryError as e:
            raise ValueError(f"prepare.decontaminate: {path}, line {lineno} cannot be read ({e.reason}): repair "
                             "or remove that line, or drop the file from prepare.decontaminate") from None
        if not isinstance(rec, dict):
            raise ValueError(f"prepare.decontaminate: {path}, line {lineno} is a JSON {type(rec).__name__}, "
                             "not a record: repair or remove that line, or drop the file from prepare.decontaminate")
        return rec

    def _add(self, rec: dict) -> None:
        # Our held-out samples name their trajectory (older ones: ids "<trajectory id>-t<turn>");
        # other benchmarks' ids are kept whole too.
        self.ids.add(str(rec.get("trajectory_id") or str(rec.get("id", "")).rsplit("-t", 1)[0]))
        texts = [m if isinstance(m, str) else m.get("content", "") for m in rec.get("response", [])
                 if isinstance(m, (str, dict))]
        texts += [m.get("content", "") for m in rec.get("prompt", [])
                  if isinstance(m, dict) and m.get("role") == "assistant"]
        for text in texts:
            self.grams |= ngrams(text, self.n)

    def reason(self, traj: Trajectory) -> str | None:
        if traj.id in self.ids:
            return "eval id"
        if self.grams:
            hits = 0
            for step in traj.steps:
                hits += len(ngrams(step.observation, self.n) & self.grams)
                if hits >= self.min_overlap:
                    return "eval n-gram overlap"
        return None
