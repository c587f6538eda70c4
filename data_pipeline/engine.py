"""The data engine of `lwm prepare`: datatrove pipelines, run locally or on Slurm.

    read + validate + curate + MinHash signatures ──▶ check ──▶ duplicate ids ──▶ buckets
                       (tasks)                          (1)          (1)            (14)
    ──▶ clusters ──▶ render: drop duplicates, split, tokenize, pack CPT shards, SFT/RL/eval rows
          (1)         (tasks)

Every box is a datatrove executor; datatrove marks each task complete when it finishes, so a
killed prepare, rerun, redoes only the unfinished tasks, and every task's output depends only
on its input, so the result is byte-identical to an uninterrupted run. Which records survive
does not depend on the number of tasks either: of each cluster of duplicates, dedup keeps the
record that comes first in the input, and of records sharing an id, the first in the input is
kept. Render drops both by input order (counted as "duplicate" and "duplicate id"): the
corpus is written once, by curate, and read once more, by render. Tasks stream records: peak
memory depends on the task, not on the corpus. `prepare.executor=slurm` renders the same
pipelines as Slurm job arrays (datatrove's SlurmPipelineExecutor).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shlex
import struct
from collections import Counter
from pathlib import Path

import numpy as np
from xxhash import xxh64_intdigest

from datatrove.data import Document
from datatrove.executor import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                              MinhashDedupCluster, MinhashDedupSignature)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.text import TextNormConfig, simplify_text
from datatrove.utils.word_tokenizers import WordTokenizer

from data_pipeline.curate.dedup import Decontaminator, content_text
from data_pipeline.curate.filters import clean_turns, drop_reason
from data_pipeline.curate.redact import redact_text, redact_trajectory
from data_pipeline.progress import QuietLocalExecutor
from lwm.config import DataConfig, PrepareConfig, PrepareSlurmConfig
from lwm.domains import get_domain, register_extra
from lwm.schema import (MALFORMED, MAX_DEPTH, Trajectory, TrajectoryError, check_values,
                        encodable, jsonl_lines, parse_line, validate)

log = logging.getLogger("lwm.engine")
# Trajectories differ in names, numbers and punctuation (paths, flags, values) that prose
# dedup normalises away; only whitespace is normalised here.
MINHASH = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1,
                        norm_config=TextNormConfig(lowercase=False, remove_punctuation=False,
                                                   norm_unicode_diacritics=False, norm_numbers=False))


class WhitespaceWords(WordTokenizer):
    """Shingles over whitespace-separated words: trajectories are commands, code and screens,
    for which a natural-language word tokenizer is the wrong unit (and would pull in spaCy)."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return text.splitlines()

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, pos = [], 0
        for line in text.splitlines(keepends=True):
            spans.append((pos, pos + len(line)))
            pos += len(line)
        return spans


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    tmp.replace(path)


class ReadAndCurate(PipelineStep):
    """Reads trajectory JSONL (task r takes every line i with i % world == r), validates it
    (bad records -> quarantine with file, line, byte offset, field, reason), then redacts, cleans
    turns, applies the recipe's filters and decontaminates. Survivors become documents whose text
    is what dedup compares and whose metadata carries the record and its trainable turns.

    Input is read as bytes and only a task's own lines are decoded: a line that is not UTF-8,
    not JSON, too long, too deep or holds a lone surrogate is quarantined like any other bad
    record, so nothing that datatrove's writers cannot encode gets past this step."""

    name = "read+curate"
    type = "lwm"

    def __init__(self, inputs: list[str], work: str, data: DataConfig, prepare: PrepareConfig):
        super().__init__()
        self.inputs, self.work, self.data, self.prepare = inputs, work, data, prepare

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        register_extra(self.data.extra_domains)  # a worker process starts with the built-ins only
        p = self.prepare
        decontam = (Decontaminator([Path(x) for x in p.decontaminate], p.decontam_ngram)
                    if p.decontaminate else None)
        work = Path(self.work)
        counts = {"in": 0, "quarantined": Counter(), "filtered": Counter(), "redactions": Counter(),
                  "turns": Counter()}
        domains, known = {}, set(self.data.domains)
        qpath = work / "quarantine" / f"{rank:05d}.jsonl"
        qpath.parent.mkdir(parents=True, exist_ok=True)
        index = -1
        ids = IdWriter(work, rank)
        with ids, open(qpath, "w", encoding="utf-8") as quarantine:
            for path in self.inputs:
                for lineno, offset, raw in jsonl_lines(path, p.max_record_bytes):
                    index += 1
                    if index % world_size != rank:
                        continue
                    counts["in"] += 1
                    rec = None
                    try:
                        if isinstance(raw, TrajectoryError):  # too long: never read
                            raise raw
                        rec = parse_line(raw, path, lineno)
                        validate(rec, path, lineno, domains=known)
                        check_values(rec, path, lineno)
                        traj = Trajectory.from_dict(rec, path, lineno)
                        if traj.domain not in domains:
                            domains[traj.domain] = get_domain(traj.domain)
                        try:
                            doc = self._curate(traj, domains[traj.domain], decontam, counts)
                        except MALFORMED as e:  # a domain's hook tripped on a record the schema allows
                            why = f"the {traj.domain} domain cannot read it ({type(e).__name__}: {e})"
                            raise TrajectoryError(why, "<record>", path, lineno) from None
                    except TrajectoryError as e:
                        entry = quarantine_entry(e, path, lineno, offset, raw, rec, p)
                        counts["quarantined"][reason_key(entry["field"], entry["reason"])] += 1
                        quarantine.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        continue
                    if doc is not None:  # its place in the input, in any task layout
                        doc.metadata["order"] = index
                        ids.add(traj.id, index)
                        yield doc
        counts = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in counts.items()}
        write_json(work / "stats" / f"curate_{rank:05d}.json", counts)

    def _curate(self, traj, domain, decontam, counts):
        filters = self.prepare.filters
        if self.prepare.redact:
            traj = redact_trajectory(traj, counts["redactions"])
        traj, sample, stats = clean_turns(traj, filters, domain)
        counts["turns"].update(stats)
        reason = drop_reason(traj, filters, domain)
        if reason is None and not any(sample):
            reason = "no trainable turn"
        if reason is None and decontam is not None:
            reason = decontam.reason(traj)
        if reason is not None:
            counts["filtered"][reason] += 1
            return None
        return Document(text=content_text(traj), id=traj.id,
                        metadata={"record": traj.to_dict(), "sample": sample})


ID_BUCKETS = 16  # duplicate ids are found per bucket of ids: no task holds every id of the corpus


def _id_bucket(traj_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(traj_id.encode(), digest_size=4).digest(), "big") % ID_BUCKETS


class IdWriter:
    """A curate task's surviving (order, id) pairs, into one file per id bucket."""

    def __init__(self, work: Path, rank: int):
        self.work, self.rank, self.files = work, rank, {}

    def add(self, traj_id: str, order: int) -> None:
        bucket = _id_bucket(traj_id)
        if bucket not in self.files:
            path = self.work / "ids" / f"{bucket:02d}" / f"{self.rank:05d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[bucket] = open(path, "w", encoding="utf-8")
        self.files[bucket].write(json.dumps([order, traj_id]) + "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.files.values():
            f.close()


class FindDuplicateIds(PipelineStep):
    """One task, a bucket of ids at a time: of every id that more than one record carries, all
    but the record first in input order are dropped (their orders go to duplicate_ids/<b>.npy),
    so a trajectory read twice (a log exported twice, collected and ingested) trains once,
    whatever the task layout and whether MinHash dedup is on."""

    name = "duplicate ids"
    type = "lwm"

    def __init__(self, work: str):
        super().__init__()
        self.work = work

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for bucket in range(ID_BUCKETS):
            first: dict[str, int] = {}
            drop = []
            for path in sorted((Path(self.work) / "ids" / f"{bucket:02d}").glob("*.jsonl")):
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        order, traj_id = json.loads(line)
                        if traj_id in first:
                            drop.append(max(order, first[traj_id]))
                            first[traj_id] = min(order, first[traj_id])
                        else:
                            first[traj_id] = order
            out = Path(self.work) / "duplicate_ids" / f"{bucket:02d}.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, np.array(sorted(drop), dtype=np.int64))
        return
        yield  # a generator, as datatrove expects of a step


def duplicate_orders(work: Path) -> np.ndarray:
    """The input orders of records dropped for an id an earlier record carries, sorted."""
    parts = [np.load(p) for p in sorted((Path(work) / "duplicate_ids").glob("*.npy"))]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def is_duplicate(orders: np.ndarray, order: int) -> bool:
    i = int(np.searchsorted(orders, order))
    return i < len(orders) and int(orders[i]) == order


class CheckCurated(PipelineStep):
    """One task after curation: when no record survived it, stop with why (the counts and the
    first quarantined record's file, line, byte offset, field and reason, redacted as the
    quarantine is) rather than let the next step fail on an empty folder."""

    name = "check curated"
    type = "lwm"

    def __init__(self, work: str, inputs: list[str], domains: list[str]):
        super().__init__()
        self.work, self.inputs, self.domains = work, inputs, domains

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = Path(self.work)
        stats = [json.loads(p.read_text()) for p in sorted((work / "stats").glob("curate_*.json"))]
        quarantined, filtered = Counter(), Counter()
        for st in stats:
            quarantined.update(st["quarantined"])
            filtered.update(st["filtered"])
        n_in = sum(st["in"] for st in stats)
        if n_in > sum(quarantined.values()) + sum(filtered.values()):
            return
        msg = (f"prepare: none of the {n_in} records of {', '.join(self.inputs)} survived curation: "
               f"{sum(quarantined.values())} quarantined {dict(quarantined)}, "
               f"{sum(filtered.values())} filtered {dict(filtered)}")
        for path in sorted((work / "quarantine").glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                line = f.readline()
            if line:
                q = json.loads(line)
                msg += (f". The first quarantined: {q['file']}, line {q['line']}, field {q['field']}: "
                        f"{q['reason']} (the line starts at byte {q['offset']}; all of them in "
                        f"{work / 'quarantine'})")
                if "unknown domain" in q["reason"]:
                    msg += (f". The run's domains are {', '.join(self.domains)}: data.domains plus "
                            "those data.extra_domains declares")
                break
        raise ValueError(msg)
        yield  # a generator, as datatrove expects of a step


def reason_key(field: str, reason: str) -> str:
    """A quarantine reason without record-specific values, for counting."""
    return f"{field}: " + re.sub(r"'[^']*'|\d+", "*", reason.split(" (")[0])


def quarantine_entry(e: TrajectoryError, path: str, lineno: int, offset: int, raw, rec,
                     prepare: PrepareConfig) -> dict:
    """What the quarantine keeps of a bad line: where it is (file, line, byte offset), the field
    and the reason, and the record (or, when it did not parse, the line's text) redacted as the
    outputs are (prepare.redact). Its bytes only with prepare.quarantine_raw, unredacted."""
    scrub = redact_text if prepare.redact else str
    entry = {"file": path, "line": lineno, "offset": offset, "field": encodable(scrub(e.field)),
             "reason": encodable(scrub(e.reason)), "record": None}
    rec = e.value if e.value is not None else rec
    if isinstance(rec, dict):
        entry["record"] = _scrubbed(rec, scrub, MAX_DEPTH)
    elif isinstance(raw, bytes):
        entry["text"] = encodable(scrub(raw.decode("utf-8", "replace").rstrip("\r\n")))
    if prepare.quarantine_raw and isinstance(raw, bytes):
        entry["raw"] = base64.b64encode(raw).decode("ascii")
    return entry


def _scrubbed(value, scrub, depth: int):
    """`value` with every string (keys too) through `scrub` and lone surrogates as U+FFFD, so the
    quarantine can always be written; containers deeper than `depth` are elided."""
    if isinstance(value, str):
        return encodable(scrub(value))
    if isinstance(value, (dict, list)) and depth == 0:
        return f"<nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, dict):
        return {_scrubbed(k, scrub, 0): _scrubbed(v, scrub, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, scrub, depth - 1) for v in value]
    return value


class Executors:
    """Builds datatrove executors of one kind (local or slurm) under one work folder."""

    def __init__(self, kind: str, work: Path, workers: int, slurm: PrepareSlurmConfig | None = None):
        if kind not in ("local", "slurm"):
            raise ValueError(f"prepare.executor: '{kind}' is not one of local, slurm")
        self.kind, self.work, self.workers = kind, work, workers
        self.slurm = slurm or PrepareSlurmConfig()
        self.previous = None

    def __call__(self, name: str, pipeline: list, tasks: int):
        logs = str(self.work / "logs" / name)
        if self.kind == "local":
            # One worker runs tasks in this process: no pool to start for small inputs.
            ex = QuietLocalExecutor(pipeline=pipeline, tasks=tasks, logging_dir=logs,
                                    workers=min(self.workers, tasks), depends=self.previous,
                                    start_method="forkserver")
        else:
            # The jobs import what this process imports (a user domain's module found in the
            # current folder is on PYTHONPATH by now), whatever the cluster's --export default.
            path = os.environ.get("PYTHONPATH")
            ex = SlurmPipelineExecutor(
                pipeline=pipeline, tasks=tasks, logging_dir=logs, depends=self.previous,
                job_name=f"lwm-prepare-{name}", time=self.slurm.time,
                partition=self.slurm.partition or "default", cpus_per_task=1,
                mem_per_cpu_gb=self.slurm.mem_per_cpu_gb, sbatch_args=dict(self.slurm.sbatch_args),
                env_command=f"export PYTHONPATH={shlex.quote(path)}" if path else None)
        self.previous = ex
        return ex


_MERSENNE61 = np.uint64((1 << 61) - 1)  # datatrove's modulus of 64-bit MinHash permutations


class CurateSignatures(MinhashDedupSignature):
    """MinHash signatures of the curated documents as they stream past to the writer (so the
    curated corpus is not read again to sign it), and beside them (orders/<rank>.npy) each
    document's place in the input, by the index the signatures name it with (the task's
    document count). Datatrove's own step then sorts and verifies the bucket files.

    Shingles and signatures are datatrove's, bit for bit (tests/test_curate.py), computed with
    less Python per shingle and cheaper arithmetic per hash."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hashing = (self.config.hash_config.precision, self.config.hash_config.hash_fc)
        assert hashing == (64, "xxhash") and isinstance(self.word_tokenizer, WhitespaceWords), \
            "get_shingles and get_signature below are datatrove's for 64-bit xxhash over WhitespaceWords"

    def get_shingles(self, text: str) -> np.ndarray:
        """xxhash64 of each n-gram of whitespace-separated words, as datatrove's get_shingles
        (64-bit xxhash, whitespace-only normalisation, WhitespaceWords) gives them: after
        simplify_text, words are separated by single spaces, so each n-gram joined by spaces
        is a slice of the text's UTF-8 bytes (a space byte is never inside a character)."""
        cfg = self.config
        words = simplify_text(text, cfg.norm_config).encode()
        n = cfg.n_grams
        spaces = np.flatnonzero(np.frombuffer(words, np.uint8) == 32)
        count = len(spaces) + 2 - n  # words - n + 1 n-grams
        if not words or count <= 0:
            return np.zeros((0, 1), dtype=np.uint64)
        starts = np.concatenate(([0], spaces + 1))[:count].tolist()
        ends = np.concatenate((spaces, [len(words)]))[n - 1:].tolist()
        return np.fromiter([xxh64_intdigest(words[s:e]) for s, e in zip(starts, ends)],
                           dtype=np.uint64, count=count).reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """Datatrove's signature, min over shingles of (a * shingle + b) mod 2^64 mod (2^61 - 1):
        over distinct shingles (the minimum is the same), in place, and the modulo as the
        Mersenne fold x mod p = (x & p) + (x >> 61) (at most p + 7), which needs the rarely
        taken correction only where some value reaches p."""
        a, b = self.parameters
        phv = np.unique(shingles).reshape((-1, 1)) * a
        phv += b
        high = phv >> np.uint64(61)
        phv &= _MERSENNE61
        phv += high
        if phv.max() >= _MERSENNE61:
            np.subtract(phv, _MERSENNE61, out=phv, where=phv >= _MERSENNE61)
        return [x.tolist() for x in np.split(phv.min(axis=0), self.config.num_buckets)]

    def run(self, data, rank: int = 0, world_size: int = 1):
        orders = []
        cfg = self.config
        record = struct.Struct(f"<{cfg.hashes_per_bucket}{cfg.hash_config.struct_format}I")
        buckets = [self.output_folder.open(f"bucket_{b:03d}/{rank:05d}.minhash.sig", mode="wb")
                   for b in range(cfg.num_buckets)]
        for doc_idx, doc in enumerate(data):
            orders.append(doc.metadata["order"])
            with self.track_time():
                shingles = self.get_shingles(doc.text)
                if shingles.size != 0:
                    for bucket, sig in zip(buckets, self.get_signature(shingles)):
                        bucket.write(record.pack(*sig, doc_idx))
            yield doc
        for f in buckets:
            f.close()
        path = Path(self.output_folder.path) / "orders" / f"{rank:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.array(orders, dtype=np.int64))
        self.skip_existing_sigs = True  # written above: datatrove's step only sorts them
        super().run(iter(()), rank, world_size)


class FirstInInputCluster(MinhashDedupCluster):
    """Clusters of duplicates, as datatrove's step finds them (connected by shared LSH buckets),
    but each keeps its first record in input order. Datatrove keeps a member chosen by the
    (task, index) pairs and the merge order, so another task count kept another record, and
    with it moved the split and the tokenizer's sample. The others' input orders are written
    (REMOVED), which render and the tokenizer skip: no step rewrites the corpus without them."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        signatures = Path(self.input_folder.path).parent / "signatures" / "orders"
        orders: dict[int, np.ndarray] = {}

        def order(node):
            task, doc = node
            if task not in orders:
                orders[task] = np.load(signatures / f"{task:05d}.npy", mmap_mode="r")
            return int(orders[task][doc])

        parent: dict = {}

        def root(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        with self.track_time():
            for dup_file in self.input_folder.list_files(glob_pattern="*.dups"):
                with self.input_folder.open(dup_file, "rb") as f:
                    for t1, d1, t2, d2 in read_tuples_from_file(f, "4I"):
                        a, b = root((t1, d1)), root((t2, d2))
                        if a != b:  # the root is the member first in the input
                            a, b = (a, b) if order(a) < order(b) else (b, a)
                            parent[b] = a
            removed = []
            for node in sorted(parent):
                self.stat_update("duplicates")
                if root(node) != node:
                    removed.append(order(node))
                    self.stat_update("to_remove")
            out = Path(self.output_folder.path) / REMOVED
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, np.array(sorted(removed), dtype=np.int64))
        return
        yield  # a generator, as datatrove expects of a step


REMOVED = "removed_orders.npy"  # in minhash/clusters: the input orders of near duplicates dropped


def near_duplicate_orders(work: Path) -> np.ndarray:
    """The input orders of records MinHash dedup drops (each cluster keeps its first), sorted;
    none when dedup is off."""
    path = Path(work) / "minhash" / "clusters" / REMOVED
    return np.load(path) if path.exists() else np.zeros(0, dtype=np.int64)


def _doc_adapter(self, doc: Document) -> dict:
    """A curated document as written: its id and metadata (without the deep copy of every record
    that datatrove's default adapter, dataclasses.asdict, makes). Its text, what dedup compares,
    was signed on the way here and nothing reads it again: the id stands in for it (datatrove's
    reader skips a document without text)."""
    return {"text": doc.id, "id": doc.id, "metadata": doc.metadata}


def curate_and_dedup(inputs: list[Path], work: Path, data: DataConfig, prepare: PrepareConfig,
                     tasks: int, executors: Executors):
    """Builds the executors up to the curated documents in work/curated and, with dedup, the
    input orders of the near duplicates to drop (near_duplicate_orders); returns the last."""
    signatures = work / "minhash" / "signatures"
    executors("curate", [
        ReadAndCurate([str(p) for p in inputs], str(work), data, prepare),
        *([CurateSignatures(output_folder=str(signatures), config=MINHASH, language=WhitespaceWords())]
          if prepare.dedup else []),
        JsonlWriter(str(work / "curated"), output_filename="${rank}.jsonl.gz", adapter=_doc_adapter),
    ], tasks)
    executors("check_curated", [CheckCurated(str(work), [str(p) for p in inputs], list(data.domains))], 1)
    last = executors("duplicate_ids", [FindDuplicateIds(str(work))], 1)
    if not prepare.dedup:
        return last
    executors("minhash_buckets", [MinhashDedupBuckets(
        input_folder=str(signatures), output_folder=str(work / "minhash" / "buckets"),
        config=MINHASH)], MINHASH.num_buckets)
    return executors("minhash_cluster", [FirstInInputCluster(
        input_folder=str(work / "minhash" / "buckets"),
        output_folder=str(work / "minhash" / "clusters"), config=MINHASH)], 1)
