"""`lwm prepare`: trajectories in; CPT shards, SFT samples, RL prompts and eval sets out.

Inputs: prepare.input (else the run's collect output, when there is one), every ingest/*.jsonl
of the run and data.trajectories, each file once, read as bytes and decoded line by line.
validate -> quarantine bad records (prepare/quarantine.jsonl: file, line, byte offset, field,
reason, and the record, or the text of a line that did not parse, redacted as the outputs are;
a line that is not UTF-8, not JSON, longer than prepare.max_record_bytes, nested too deep or
holding a lone surrogate is one more bad record, never a crash) -> redact secrets -> the
recipe's filters -> decontaminate against eval sets (nothing left: stop, saying why) -> one
record per trajectory id (the first in input order) -> MinHash dedup (exact and near) -> split
train/held-out by trajectory -> tokenizer (data.tokenizer; else the starting checkpoint's,
cpt.init or model.path; else trained on the first trajectories of the train split) -> CPT shards
(Megatron .bin/.idx, packed, with a loss mask by turn type) -> SFT samples and RL prompts
(parquet shards) -> eval sets (AgentWorldBench JSONL) -> manifest (counts, the tokenizer's
fingerprint, and every published file's size and content hash, which readers and the
up-to-date check verify).
Counts reconcile: in = kept + quarantined + filtered. Which records are kept, the split and the
tokenizer do not depend on `prepare.tasks`.

The per-record work runs as datatrove pipelines (data_pipeline/engine.py) in `prepare.tasks`
tasks; this driver only trains the tokenizer and merges the tasks' outputs in task order.
Outputs go to a work folder and are published atomically; a killed prepare resumes its
unfinished tasks (its worker processes die with it), and a finished prepare with the same
inputs, settings and tokenizer is not redone unless its outputs differ from its manifest.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import random
import shutil
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader
from omegaconf import DictConfig, OmegaConf

from data_pipeline import indexed, lifeline, progress
from data_pipeline.curate.turn_types import KEEP, token_keep_mask, turn_kinds
from data_pipeline.engine import (Executors, curate_and_dedup, duplicate_orders, is_duplicate,
                                  near_duplicate_orders, write_json)
from lwm import render
from lwm.config import DataConfig, PrepareConfig
from lwm.domains import get_domain, register_extra, run_domains
from lwm.identity import tokenizer_fingerprint
from lwm.schema import Trajectory
from lwm.tokenizer import load_tokenizer, train_tokenizer
from lwm.tracking import RunPaths, Tracker, file_record, verify_files

log = logging.getLogger("lwm.prepare")


def _inputs(cfg: DictConfig, paths: RunPaths) -> list[Path]:
    """What prepare reads: prepare.input (else the run's collect output, when there is one), every
    file `lwm ingest` wrote into the run, and data.trajectories; each file once, however often
    it is named."""
    if cfg.prepare.input:
        inputs = [Path(cfg.prepare.input)]
    else:
        inputs = [paths.trajectories] if paths.trajectories.exists() else []
    inputs += sorted((paths.root / "ingest").glob("*.jsonl"))  # what `lwm ingest` wrote
    inputs += [Path(p) for p in cfg.data.trajectories]
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"prepare: input {p} does not exist")
    if not inputs:
        raise FileNotFoundError(
            f"prepare: nothing to prepare in {paths.root}: no collected trajectories "
            f"({paths.trajectories}) and nothing ingested ({paths.root / 'ingest'}/*.jsonl); run "
            "`lwm collect` or `lwm ingest` first, or set prepare.input")
    return list(dict.fromkeys(p.resolve() for p in inputs))


# The files of a tokenizer in a checkpoint folder, copied verbatim (so its fingerprint agrees).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt",
                   "tokenizer.model")


def tokenizer_choice(cfg: DictConfig) -> tuple[str, str]:
    """The tokenizer prepare uses, as (folder, how the manifest names it): data.tokenizer when
    set; else the starting checkpoint's (cpt.init, else model.path), so CPT continues on ids of
    the vocabulary it was trained with; else ("", ...): one is trained on the train split."""
    if cfg.data.tokenizer:
        return str(cfg.data.tokenizer), str(cfg.data.tokenizer)
    for key in ("cpt.init", "model.path"):
        start = OmegaConf.select(cfg, key, default="")
        if start:
            if not (Path(start) / "tokenizer.json").is_file():
                raise FileNotFoundError(
                    f"prepare: the starting checkpoint {start} ({key}) has no tokenizer.json, and "
                    "its data must be tokenized with its tokenizer: set data.tokenizer= to the "
                    "tokenizer it was trained with")
            return str(Path(start).resolve()), f"the starting checkpoint {start} ({key})"
    return "", "trained on the train split"


def _fingerprint(cfg: DictConfig, inputs: list[Path], tokenizer: str) -> str:
    h = hashlib.sha256()
    for p in inputs:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    for part in (cfg.data, cfg.prepare):
        h.update(json.dumps(OmegaConf.to_container(part, resolve=True), sort_keys=True).encode())
    h.update(str(cfg.seed).encode())
    # The tokenizer by content: another starting checkpoint, or a tokenizer rewritten in place.
    h.update(f"tokenizer:{tokenizer_fingerprint(tokenizer) if tokenizer else 'trained'}".encode())
    return h.hexdigest()[:16]


def is_heldout(traj_id: str, fraction: float, seed: int) -> bool:
    """Split by trajectory with a stable hash, so adding data never moves old records."""
    digest = hashlib.sha256(f"{seed}:{traj_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _in_stats_sample(traj_id: str, turn: int, every: int = 16) -> bool:
    """A fixed 1-in-`every` sample of SFT rows whose token lengths the manifest reports."""
    return int(hashlib.blake2b(f"{traj_id}:{turn}".encode(), digest_size=4).hexdigest(), 16) % every == 0


def _rng(seed: int, key: str) -> random.Random:
    """Per-record randomness: the same record gets the same draws in any task layout."""
    return random.Random(f"{seed}:{key}")


def encode_texts(tok, texts: list[str]) -> list[list[int]]:
    """tok.encode(text, add_special_tokens=False) of each text, in one call to the Rust tokenizer
    when there is one (the same ids, less overhead)."""
    if getattr(tok, "is_fast", False):
        return [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    return [tok.encode(text, add_special_tokens=False) for text in texts]


def cpt_tokens(tok, domain, traj: Trajectory, masked: bool) -> tuple[list[int], bytes, Counter]:
    """A trajectory's CPT token ids and loss mask (1 = predicted). Segments are tokenized
    apart (in one call) so every observation's tokens are known; with `masked`, each
    observation keeps the share of its tokens that its turn type earns."""
    segments = render.cpt_segments(domain, traj)
    encoded = encode_texts(tok, [text for text, _ in segments])
    kinds_of = turn_kinds(traj.initial_observation, traj.steps) if masked else None
    ids, mask, kinds = [], bytearray(), Counter()
    for (_, turn), seg in zip(segments, encoded):
        ids += seg
        if kinds_of is not None and turn:
            kind = kinds_of[turn - 1]
            kinds[kind] += 1
            mask += bytes(token_keep_mask(len(seg), KEEP[kind], f"{traj.id}:{turn}"))
        else:
            mask += b"\x01" * len(seg)
    ids.append(tok.eos_token_id)
    mask.append(1)
    return ids, bytes(mask), kinds


def mixture_copies(traj: Trajectory, mixture: dict, seed: int) -> int:
    """How many times a training trajectory enters CPT/SFT/RL: its domain's (or source's)
    mixture weight w gives floor(w) copies plus one more with probability frac(w), drawn from
    the trajectory id so every task layout agrees. Unlisted: weight 1."""
    weight = mixture.get(traj.source, mixture.get(traj.domain, 1.0))
    whole, frac = divmod(float(weight), 1.0)
    return int(whole) + (_rng(seed, "mixture:" + traj.id).random() < frac)


class ShardPacker:
    """Packs token streams into seq_len sequences (EOS between documents) in Megatron's indexed
    format, one packed sequence per entry, with a parallel uint8 loss-mask dataset
    (<prefix>_lossmask) aligned token for token. The last sequence is padded, never trained.
    Written directly (data_pipeline/indexed.py), byte for byte what megatron-core's
    IndexedDatasetBuilder writes, without importing it (and torch) in every render worker."""

    def __init__(self, prefix: Path, seq_len: int, pad_id: int):
        self.prefix, self.seq_len, self.pad_id = prefix, seq_len, pad_id
        self.ids = open(str(prefix) + ".bin", "wb")
        self.mask = open(str(prefix) + "_lossmask.bin", "wb")
        self.buf, self.mbuf, self.sequences, self.real = array("i"), bytearray(), 0, 0
        assert self.buf.itemsize == 4  # int32, as the index declares

    def add(self, ids: list[int], mask: bytes) -> None:
        self.buf.extend(ids)
        self.mbuf += mask
        n = self.seq_len
        while len(self.buf) >= n:
            self.ids.write(self.buf[:n].tobytes())
            self.mask.write(self.mbuf[:n])
            del self.buf[:n], self.mbuf[:n]
            self.sequences += 1
            self.real += n

    def finish(self) -> dict:
        if self.buf:
            self.real += len(self.buf)
            pad = self.seq_len - len(self.buf)
            self.buf.extend([self.pad_id] * pad)
            self.ids.write(self.buf.tobytes())
            self.mask.write(bytes(self.mbuf) + bytes(pad))
            self.sequences += 1
        self.ids.close()
        self.mask.close()
        indexed.write_index(Path(str(self.prefix) + ".idx"), np.int32, self.sequences, self.seq_len)
        indexed.write_index(Path(str(self.prefix) + "_lossmask.idx"), np.uint8, self.sequences, self.seq_len)
        return {"sequences": self.sequences, "tokens": self.sequences * self.seq_len,
                "real_tokens": self.real}


_WORKER_TOKENIZER: dict = {}


def worker_tokenizer(path: str):
    """The tokenizer at `path`, loaded once per process. Datatrove runs every task of a worker
    in one long-lived process, and each load of a fast tokenizer leaves about 1.4 MB behind:
    loaded per task, a worker would grow with the number of tasks, i.e. with the corpus."""
    if path not in _WORKER_TOKENIZER:
        _WORKER_TOKENIZER.clear()
        _WORKER_TOKENIZER[path] = load_tokenizer(path)
    return _WORKER_TOKENIZER[path]


class RenderMemo:
    """A trajectory's domain that renders each action and system prompt once: SFT, RL and eval
    prompts render every earlier turn in the window again (eval every turn, for every turn)."""

    def __init__(self, domain):
        self._domain, self._actions, self._prompts = domain, {}, {}

    def __getattr__(self, name):
        return getattr(self._domain, name)

    def render_action(self, action: str) -> str:
        if action not in self._actions:
            self._actions[action] = self._domain.render_action(action)
        return self._actions[action]

    def system_prompt(self, traj: Trajectory, *args, **kwargs) -> str:
        key = (id(traj), args, tuple(sorted(kwargs.items())))  # one trajectory per RenderMemo
        if key not in self._prompts:
            self._prompts[key] = self._domain.system_prompt(traj, *args, **kwargs)
        return self._prompts[key]


class RenderShards(PipelineStep):
    """Per task: split, tokenize and pack CPT shards, render SFT/RL rows and eval records."""

    name = "render"
    type = "lwm"

    def __init__(self, work: str, tokenizer: str, data: DataConfig, prepare: PrepareConfig, seed: int):
        super().__init__()
        self.work, self.tokenizer, self.seed = work, tokenizer, seed
        self.data, self.prepare = data, prepare

    def run(self, data, rank: int = 0, world_size: int = 1):
        register_extra(self.data.extra_domains)  # a worker process starts with the built-ins only
        tok = worker_tokenizer(self.tokenizer)
        out = Path(self.work) / "render"
        for sub in ("cpt", "sft", "rl", "eval", "splits"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        packers = {s: ShardPacker(out / "cpt" / f"{s}.{rank:05d}", self.data.seq_len, tok.pad_token_id)
                   for s in ("train", "heldout")}
        sft, rl = RowSink(out / "sft" / f"{rank:05d}.parquet"), RowSink(out / "rl" / f"{rank:05d}.parquet")
        evals: dict = {}  # domain -> its open JSONL file
        stats = {"split": Counter(), "domains": Counter(), "copies": Counter(), "duplicates": 0,
                 "duplicate_ids": 0,
                 "turn_types": {"train": Counter(), "heldout": Counter()},
                 "prompt_tokens": [], "target_tokens": []}
        splits = {s: open(out / "splits" / f"{s}.{rank:05d}.jsonl", "w", encoding="utf-8")
                  for s in ("train", "heldout")}
        near, duplicates = near_duplicate_orders(Path(self.work)), duplicate_orders(Path(self.work))
        for doc in data:
            if is_duplicate(near, doc.metadata["order"]):
                stats["duplicates"] += 1
                continue
            if is_duplicate(duplicates, doc.metadata["order"]):
                stats["duplicate_ids"] += 1
                continue
            record = doc.metadata["record"]
            traj = Trajectory.from_dict(record)
            sample = doc.metadata["sample"]
            domain = RenderMemo(get_domain(traj.domain))
            split = "heldout" if is_heldout(traj.id, self.data.heldout_fraction, self.seed) else "train"
            stats["split"][split] += 1
            stats["domains"][traj.domain] += 1
            splits[split].write(json.dumps(record, ensure_ascii=False) + "\n")  # traj.to_json()
            ids, mask, kinds = cpt_tokens(tok, domain, traj, self.prepare.cpt_loss_mask)
            copies = 1 if split == "heldout" else mixture_copies(traj, self.data.mixture, self.seed)
            if split == "train":
                stats["copies"][traj.domain] += copies
            for _ in range(copies):
                packers[split].add(ids, mask)
            stats["turn_types"][split].update(kinds)
            turns = [t for t in range(1, len(traj.steps) + 1) if sample[t - 1]]
            if split == "heldout":
                for t in turns:
                    rec = render.agentworldbench_record(domain, traj, t)
                    if traj.domain not in evals:
                        (out / "eval" / traj.domain).mkdir(exist_ok=True)
                        evals[traj.domain] = open(out / "eval" / traj.domain / f"{rank:05d}.jsonl", "w",
                                                  encoding="utf-8")
                    evals[traj.domain].write(json.dumps(rec, ensure_ascii=False) + "\n")
                continue
            rng = _rng(self.seed, traj.id)
            for copy in range(copies):  # a copy draws its own prompt variants and RL turn
                for t in turns:
                    variant = rng.randrange(render.FIRST_SFT_VARIANT, len(domain.PROMPT_VARIANTS))
                    prompt, answer = render.turn_messages(domain, traj, t, self.data.max_history, variant)
                    sft.add({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t,
                                "copy": copy, "prompt_variant": variant, "prompt": prompt,
                                "completion": [answer]})
                    if _in_stats_sample(traj.id, t):  # templating every sample would dominate
                        # apply_chat_template(tokenize=True) encodes its text without special tokens
                        p_ids, t_ids = encode_texts(tok, [tok.apply_chat_template(prompt, tokenize=False),
                                                          answer["content"]])
                        stats["prompt_tokens"].append(len(p_ids))
                        stats["target_tokens"].append(len(t_ids))
                # RL takes one turn per trajectory (multi-turn expansion destabilised RL in the recipe).
                t = rng.choice(turns)
                prompt, _ = render.turn_messages(domain, traj, t, self.data.max_history)
                rl.add({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t, "copy": copy,
                           "prompt": prompt, "reference": traj.steps[t - 1].observation})
        for f in (*splits.values(), *evals.values()):
            f.close()
        cpt = {s: p.finish() for s, p in packers.items()}
        sft.close()
        rl.close()
        p, t = stats.pop("prompt_tokens"), stats.pop("target_tokens")
        write_json(Path(self.work) / "stats" / f"render_{rank:05d}.json", {
            **{k: (dict(v) if isinstance(v, Counter) else v) for k, v in stats.items()},
            "turn_types": {k: dict(v) for k, v in stats["turn_types"].items()},
            "cpt": cpt, "sft": sft.count, "rl": rl.count,
            "stats_sample": len(p), "prompt_tokens_sum": sum(p), "prompt_tokens_max": max(p, default=0),
            "target_tokens_sum": sum(t), "target_tokens_max": max(t, default=0)})


class RowSink:
    """Rows into one parquet file, a row group at a time: a render task holds one group, not its
    whole output, so memory stays flat however large the task. No rows, no file."""

    def __init__(self, path: Path, group_rows: int = 2048):
        self.path, self.group_rows, self.rows, self.writer, self.count = path, group_rows, [], None, 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            try:  # a group can infer a narrower type (all-null column): widen it to the file's
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                raise ValueError(f"{self.path}: rows {self.count - len(self.rows)}.. do not fit the "
                                 f"schema of the rows before them: {e}") from e
        self.writer.write_table(table)
        self.rows = []

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()


def _docs_in_input_order(folder: Path):
    """Stream documents of a datatrove JSONL folder in input order: each task's file holds its
    records in input order (`order`), so merging the files gives the same sequence in any task
    layout, where file order interleaves the input by task."""
    reader = JsonlReader(str(folder), glob_pattern="*.jsonl.gz")
    files = sorted(p.name for p in folder.glob("*.jsonl.gz"))
    yield from heapq.merge(*(reader.read_file(f) for f in files), key=lambda d: d.metadata["order"])


class TrainTokenizer(PipelineStep):
    """One task: a byte-level BPE trained on the first `sample` trajectories of the train split
    in input order (the same ones in any task layout)."""

    name = "tokenizer"
    type = "lwm"

    def __init__(self, docs_dir: str, out: str, data: DataConfig, sample: int, seed: int):
        super().__init__()
        self.docs_dir, self.out, self.data, self.sample, self.seed = docs_dir, out, data, sample, seed

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        register_extra(self.data.extra_domains)

        work = Path(self.docs_dir).parent
        near, duplicates = near_duplicate_orders(work), duplicate_orders(work)

        def texts():
            n = 0
            for doc in _docs_in_input_order(Path(self.docs_dir)):
                if n >= self.sample:
                    return
                if is_duplicate(near, doc.metadata["order"]) or is_duplicate(duplicates, doc.metadata["order"]):
                    continue
                traj = Trajectory.from_dict(doc.metadata["record"])
                if not is_heldout(traj.id, self.data.heldout_fraction, self.seed):
                    n += 1
                    yield render.cpt_document(get_domain(traj.domain), traj)
        # Nothing else runs while the tokenizer trains: let it use every core (its result does
        # not depend on the thread count), whatever the render workers are told.
        os.environ["TOKENIZERS_PARALLELISM"], before = "true", os.environ.get("TOKENIZERS_PARALLELISM")
        try:
            train_tokenizer(texts(), self.data.vocab_size, self.out)
        finally:
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM")
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
        return
        yield  # a generator, as datatrove expects of a step


def _append(out_file, parts: list[Path]) -> None:
    """Concatenate files into an open one, streamed: a task's split file is hundreds of MB at
    1M trajectories, and reading it whole made publishing the largest process of prepare."""
    for part in parts:
        with open(part, "rb") as src:
            shutil.copyfileobj(src, out_file, 16 << 20)


def _merge(work: Path, out: Path) -> None:
    """Concatenate the tasks' outputs in task order into the published layout."""
    render_dir = work / "render"
    (out / "cpt").mkdir(parents=True)
    for split in ("train", "heldout"):
        for suffix, dtype in (("", np.int32), ("_lossmask", np.uint8)):
            parts = sorted(render_dir.glob(f"cpt/{split}.*{suffix}.idx"))
            parts = [p for p in parts if p.name.endswith(f"{suffix}.idx") and
                     (suffix or not p.name.endswith("_lossmask.idx"))]
            if not parts:
                continue
            indexed.concat([str(p)[:-4] for p in parts], out / "cpt" / f"{split}{suffix}", dtype)
    for name in ("sft", "rl"):
        (out / name).mkdir()
        for part in sorted((render_dir / name).glob("*.parquet")):
            shutil.copyfile(part, out / name / f"part-{part.stem}.parquet")
    (out / "eval").mkdir()
    for dom_dir in sorted((render_dir / "eval").iterdir()):
        with open(out / "eval" / f"{dom_dir.name}_test.jsonl", "wb") as f:
            _append(f, sorted(dom_dir.glob("*.jsonl")))
    for split in ("train", "heldout"):
        with open(out / f"{split}.jsonl", "wb") as f:
            _append(f, sorted((render_dir / "splits").glob(f"{split}.*.jsonl")))
    with open(out / "quarantine.jsonl", "wb") as f:
        _append(f, sorted((work / "quarantine").glob("*.jsonl")))


def _sum_stats(work: Path, prefix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / "stats").glob(f"{prefix}_*.json"))]


def _add(counters: list[dict]) -> dict:
    total = Counter()
    for c in counters:
        total.update(c)
    return dict(sorted(total.items()))


def check_heldout(rendered: list[dict], data: DataConfig) -> None:
    """A run too small to hold anything out would train with no held-out loss and evaluate on
    nothing: refuse it before anything is published, saying how to get a held-out set."""
    split = _add([r["split"] for r in rendered])
    if not split.get("heldout"):
        raise ValueError(
            f"prepare: none of the {split.get('train', 0)} kept trajectories fell into the held-out split "
            f"(data.heldout_fraction={data.heldout_fraction}, drawn per trajectory); collect more "
            "(collect.num_trajectories=...) or hold out more (data.heldout_fraction=...)")


def manifest_of(work: Path, out: Path, fingerprint: str, inputs, tokenizer_source, tok,
                tokenizer_dir: Path, data: DataConfig, prepare: PrepareConfig) -> dict:
    curate, rendered = _sum_stats(work, "curate"), _sum_stats(work, "render")
    n_in = sum(c["in"] for c in curate)
    quarantined = _add([c["quarantined"] for c in curate])
    filtered = _add([c["filtered"] for c in curate])
    kept = sum(sum(r["split"].values()) for r in rendered)
    if duplicates := sum(r["duplicates"] for r in rendered):
        filtered["duplicate"] = duplicates
    if duplicate_ids := sum(r["duplicate_ids"] for r in rendered):
        filtered["duplicate id"] = duplicate_ids
    cpt = {}
    for split in ("train", "heldout"):
        parts = [r["cpt"][split] for r in rendered if r["cpt"][split]["sequences"]]
        tokens, real = sum(p["tokens"] for p in parts), sum(p["real_tokens"] for p in parts)
        if parts:
            cpt[split] = {"sequences": sum(p["sequences"] for p in parts), "tokens": tokens,
                          "real_token_fraction": real / max(tokens, 1),
                          "turn_types": _add([r["turn_types"][split] for r in rendered])}
    n_sft = sum(r["sft"] for r in rendered)
    n_stats = sum(r["stats_sample"] for r in rendered)
    eval_counts = {p.name[:-len("_test.jsonl")]: sum(1 for _ in open(p)) for p in sorted((out / "eval").glob("*_test.jsonl"))}
    manifest = {
        "fingerprint": fingerprint, "inputs": [str(p) for p in inputs],
        "records": {"in": n_in, "kept": kept, "quarantined": sum(quarantined.values()),
                    "filtered": sum(filtered.values()), "quarantine_reasons": quarantined,
                    "filter_reasons": filtered},
        "curation": {"redactions": _add([c["redactions"] for c in curate]),
                     "turns": _add([c["turns"] for c in curate]),
                     "decontaminated_against": list(prepare.decontaminate),
                     "dedup": "minhash 5-gram, 14 bands x 8 rows" if prepare.dedup else "off"},
        "split": _add([r["split"] for r in rendered]),
        "domains": _add([r["domains"] for r in rendered]),
        "mixture": {"weights": dict(data.mixture),
                    "train_copies": _add([r["copies"] for r in rendered])},
        "tokenizer": {"source": tokenizer_source, "vocab_size": len(tok),
                      "fingerprint": tokenizer_fingerprint(tokenizer_dir)},
        "cpt": cpt,
        "sft": {"samples": n_sft, "token_stats_over": n_stats,
                "prompt_tokens_mean": sum(r["prompt_tokens_sum"] for r in rendered) / max(n_stats, 1),
                "prompt_tokens_max": max((r["prompt_tokens_max"] for r in rendered), default=0),
                "target_tokens_mean": sum(r["target_tokens_sum"] for r in rendered) / max(n_stats, 1),
                "target_tokens_max": max((r["target_tokens_max"] for r in rendered), default=0)},
        "rl": {"prompts": sum(r["rl"] for r in rendered)},
        "eval": eval_counts,
        # domains with training data but nothing held out: no held-out loss or score for them
        "heldout_missing_domains": sorted(set(_add([r["domains"] for r in rendered])) - set(eval_counts)),
        "executor": prepare.executor,
        # Every published file: what RunPaths.shards, the CPT reader and the up-to-date check verify.
        "files": {p.relative_to(out).as_posix(): file_record(p)
                  for p in sorted(out.rglob("*")) if p.is_file() and p != out / "manifest.json"},
    }
    r = manifest["records"]
    if r["in"] != r["kept"] + r["quarantined"] + r["filtered"]:
        raise RuntimeError(f"prepare: counts do not reconcile: {r}")
    return manifest


class Publish(PipelineStep):
    """One task, last: merge every task's output in task order, write the manifest, and
    publish the prepare folder atomically."""

    name = "publish"
    type = "lwm"

    def __init__(self, work: str, out: str, tokenizer: str, tokenizer_source: str,
                 fingerprint: str, inputs: list[str], data: DataConfig, prepare: PrepareConfig):
        super().__init__()
        self.work, self.out, self.tokenizer, self.tokenizer_source = work, out, tokenizer, tokenizer_source
        self.fingerprint, self.inputs, self.data, self.prepare = fingerprint, inputs, data, prepare

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        # a prepare/ linked to a folder shared by a sweep's jobs (launch/share.py) is replaced there
        work, out = Path(self.work), Path(self.out).resolve()
        staging = out.with_name(out.name + ".partial")
        check_heldout(_sum_stats(work, "render"), self.data)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _merge(work, staging)
        tok = load_tokenizer(self.tokenizer)
        tokenizer_dir = Path(self.tokenizer)
        if not self.data.tokenizer:  # later stages read prepare/tokenizer
            tokenizer_dir = staging / "tokenizer"
            if Path(self.tokenizer) == work / "tokenizer":  # trained here
                shutil.copytree(self.tokenizer, tokenizer_dir)
            else:  # a starting checkpoint's: its tokenizer files, not its weights
                tokenizer_dir.mkdir()
                for name in TOKENIZER_FILES:
                    if (Path(self.tokenizer) / name).is_file():
                        shutil.copyfile(Path(self.tokenizer) / name, tokenizer_dir / name)
        manifest = manifest_of(work, staging, self.fingerprint, self.inputs, self.tokenizer_source,
                               tok, tokenizer_dir, self.data, self.prepare)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
        return
        yield  # a generator, as datatrove expects of a step


def auto_tasks(inputs: list[Path], bytes_per_task: int = 64 << 20) -> int:
    """One task per `bytes_per_task` of input (one, run in-process, for small inputs). No upper
    bound: what a task holds at once (MinHash signatures it sorts, rows it renders) grows with
    its share of the corpus, so a fixed task count would make peak memory grow with the corpus."""
    size = sum(p.stat().st_size for p in inputs)
    return max(1, size // bytes_per_task)


def typed(node, schema: type):
    """A config node as an instance of its dataclass `schema`, for the datatrove steps (which
    pickle it to their workers): an unknown key or a wrong type fails here, at start-up, naming
    the key, and not in a worker as a missing dict entry."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def pipeline(data: DataConfig, prep: PrepareConfig, seed: int, paths: RunPaths, inputs: list[Path],
             fingerprint: str, tokenizer: str, source: str):
    """The whole prepare as a chain of datatrove executors; running the last runs them all."""
    # The work folder is keyed by the fingerprint: a rerun with the same inputs and settings
    # resumes its unfinished tasks; different settings start clean.
    work = paths.root / f"prepare.work-{fingerprint}"
    tasks = prep.tasks or auto_tasks(inputs)
    executors = Executors(prep.executor, work, min(prep.workers, tasks), prep.slurm)
    curate_and_dedup(inputs, work, data, prep, tasks, executors)
    docs_dir = work / "curated"  # near duplicates and repeated ids are dropped where read
    if not tokenizer:
        tokenizer = str(work / "tokenizer")
        executors("tokenizer", [TrainTokenizer(str(docs_dir), tokenizer, data,
                                               prep.tokenizer_sample, seed)], 1)
    executors("render", [JsonlReader(str(docs_dir), glob_pattern="*.jsonl.gz"),
                         RenderShards(str(work), tokenizer, data, prep, seed)], tasks)
    return work, executors("publish", [Publish(str(work), str(paths.root / "prepare"), tokenizer,
                                               source, fingerprint, [str(p) for p in inputs],
                                               data, prep)], 1)


def up_to_date(out: Path, fingerprint: str) -> dict | None:
    """The manifest of a finished prepare with this fingerprint whose outputs are all as it
    recorded them (sizes and content hashes); None, saying why, when any differs."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint:
        return None
    problems = verify_files(out, manifest.get("files"), extras_in=("cpt", "sft", "rl", "eval"),
                            hashes=True)
    if problems:
        log.warning("prepare: %s differs from its manifest, preparing again: %s", out, "; ".join(problems))
        return None
    return manifest


def prepare(cfg: DictConfig, paths: RunPaths) -> dict:
    data, prep = typed(cfg.data, DataConfig), typed(cfg.prepare, PrepareConfig)
    register_extra(data.extra_domains)
    data.domains = run_domains(data.domains, data.extra_domains)
    out = paths.root / "prepare"
    inputs = _inputs(cfg, paths)
    tokenizer, source = tokenizer_choice(cfg)
    fingerprint = _fingerprint(cfg, inputs, tokenizer)
    manifest_path = out / "manifest.json"
    if (done := up_to_date(out, fingerprint)) is not None:
        log.info("prepare: %s is up to date", out)
        return done
    for stale in paths.root.glob("prepare.work-*"):
        if stale.name != f"prepare.work-{fingerprint}":
            shutil.rmtree(stale, ignore_errors=True)
    work, last = pipeline(data, prep, cfg.seed, paths, inputs, fingerprint, tokenizer, source)
    tracker = Tracker(cfg, "prepare", paths.stage("prepare.logs"))
    with lifeline.armed():
        progress.run(last, paths.stage("prepare.logs") / "datatrove.log")
    if prep.executor == "slurm":
        log.info("prepare: submitted to Slurm; outputs appear in %s when the jobs finish", out)
        return tracker.finish({"submitted": True, "work": str(work)})
    manifest = json.loads(manifest_path.read_text())
    if manifest["heldout_missing_domains"]:
        log.warning("prepare: nothing held out for %s: they get no held-out loss or eval score; collect "
                    "more of them or raise data.heldout_fraction", ", ".join(manifest["heldout_missing_domains"]))
    if not manifest["split"].get("train"):
        raise ValueError(f"prepare: no valid training trajectories in {', '.join(map(str, inputs))}"
                         f" (records: {manifest['records']})")
    tracker.finish({k: v for k, v in manifest.items() if k not in ("fingerprint", "files")})
    shutil.copyfile(paths.root / "prepare.logs" / "metrics.json", out / "metrics.json")
    shutil.rmtree(work, ignore_errors=True)
    r = manifest["records"]
    log.info("prepare: %d in, %d kept, %d quarantined %s, %d filtered %s -> %s", r["in"], r["kept"],
             r["quarantined"], r["quarantine_reasons"], r["filtered"], r["filter_reasons"], out)
    log.info(progress.summary(manifest, out, paths.root / "prepare.logs" / "datatrove.log"))
    return manifest
