"""Exact and near-duplicate trajectories, and decontamination against evaluation sets.

Exact: a hash of the domain and every (action, observation). Near: MinHash over word 5-gram
shingles of the same text with LSH banding (14 bands x 8 rows: pairs above ~0.8 Jaccard collide
with high probability); the first trajectory of a cluster, in input order, is kept.
Decontamination: a training trajectory goes when it shares an id with an eval sample's
trajectory, or enough word n-grams of its observations with the eval observations.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from lwm.schema import Trajectory

_WORD = re.compile(r"\S+")
_MERSENNE = np.uint64((1 << 61) - 1)


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def content_text(traj: Trajectory) -> str:
    return "\n".join([traj.domain, traj.initial_observation]
                     + [f"{s.action}\n{s.observation}" for s in traj.steps])


def exact_key(traj: Trajectory) -> str:
    return hashlib.sha256(content_text(traj).encode()).hexdigest()


class NearDedup:
    """Streaming MinHash-LSH: `seen(traj)` says whether a near duplicate was already added."""

    def __init__(self, bands: int = 14, rows: int = 8, shingle: int = 5, seed: int = 0):
        self.bands, self.rows, self.shingle = bands, rows, shingle
        rng = np.random.default_rng(seed)
        n = bands * rows
        self.a = rng.integers(1, int(_MERSENNE), n, dtype=np.uint64)
        self.b = rng.integers(0, int(_MERSENNE), n, dtype=np.uint64)
        self.buckets: list[set[bytes]] = [set() for _ in range(bands)]

    def signature(self, text: str) -> np.ndarray:
        tokens = _WORD.findall(text)
        grams = {" ".join(tokens[i:i + self.shingle])
                 for i in range(max(1, len(tokens) - self.shingle + 1))}
        hashes = np.array([_h64(g) for g in grams], dtype=np.uint64)
        # Universal hashing (a*x + b) mod p per permutation; uint64 wrap-around is part of the hash.
        with np.errstate(over="ignore"):
            perm = (np.outer(hashes, self.a) + self.b) % _MERSENNE
        return perm.min(axis=0)

    def seen(self, traj: Trajectory) -> bool:
        sig = self.signature(content_text(traj))
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        duplicate = any(k in bucket for k, bucket in zip(keys, self.buckets))
        if not duplicate:
            for k, bucket in zip(keys, self.buckets):
                bucket.add(k)
        return duplicate


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
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            self._add(json.loads(line))

    def _add(self, rec: dict) -> None:
        # Our eval ids are "<trajectory id>-t<turn>"; other benchmarks' ids are kept whole too.
        self.ids.add(str(rec.get("id", "")).rsplit("-t", 1)[0])
        texts = [m.get("content", "") for m in rec.get("response", []) if isinstance(m, dict)]
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
