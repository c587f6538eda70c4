"""`lwm prepare`: trajectories in; CPT shards, SFT samples, RL prompts and eval sets out.

validate -> quarantine bad records (with the reason) -> split train/held-out by trajectory ->
tokenizer (trained on the train split unless given) -> CPT shards (Megatron .bin/.idx, packed)
-> SFT samples and RL prompts (parquet) -> eval sets (AgentWorldBench JSONL) -> manifest.

Everything is written to a temporary folder and renamed at the end, so a killed prepare leaves
either nothing or a complete output; rerunning after a kill starts over, and a finished prepare
with the same inputs and settings is not redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lwm import render
from lwm.domains import get_domain
from lwm.schema import Trajectory, TrajectoryError, read_jsonl, validate
from lwm.tokenizer import load_tokenizer, train_tokenizer
from lwm.tracking import RunPaths, Tracker

log = logging.getLogger("lwm.prepare")


def _inputs(cfg: DictConfig, paths: RunPaths) -> list[Path]:
    inputs = [Path(cfg.prepare.input)] if cfg.prepare.input else [paths.trajectories]
    inputs += sorted((paths.root / "ingest").glob("*.jsonl"))  # what `lwm ingest` wrote
    inputs += [Path(p) for p in cfg.data.trajectories]
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"prepare: input {p} does not exist (run `lwm collect` first "
                                    "or set prepare.input)")
    return inputs


def _fingerprint(cfg: DictConfig, inputs: list[Path]) -> str:
    h = hashlib.sha256()
    for p in inputs:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True).encode())
    h.update(json.dumps(OmegaConf.to_container(cfg.prepare, resolve=True), sort_keys=True).encode())
    h.update(str(cfg.seed).encode())
    return h.hexdigest()[:16]


def reason_key(e: TrajectoryError) -> str:
    """A quarantine reason without record-specific values, for counting."""
    return f"{e.field}: " + re.sub(r"'[^']*'|\d+", "*", e.reason.split(" (")[0])


def load_valid(inputs: list[Path], allowed: set[str], min_turns: int, quarantine: Path
               ) -> tuple[list[Trajectory], Counter, int]:
    """Valid trajectories; every rejected record goes to the quarantine file with its reason."""
    kept, reasons, seen, total = [], Counter(), set(), 0
    with open(quarantine, "w", encoding="utf-8") as q:
        for path in inputs:
            for lineno, rec in tqdm(read_jsonl(path), desc=f"validate {path.name}", unit="traj"):
                total += 1
                try:
                    if isinstance(rec, TrajectoryError):
                        raise rec
                    validate(rec, str(path), lineno, domains=allowed)
                    if len(rec["steps"]) < min_turns:
                        raise TrajectoryError(f"{len(rec['steps'])} turns < min_turns {min_turns}",
                                              "steps", str(path), lineno)
                    if rec["id"] in seen:
                        raise TrajectoryError(f"duplicate id '{rec['id']}'", "id", str(path), lineno)
                except TrajectoryError as e:
                    reasons[reason_key(e)] += 1
                    q.write(json.dumps({"file": str(path), "line": lineno, "field": e.field,
                                        "reason": e.reason, "record": None if isinstance(rec, Exception) else rec},
                                       ensure_ascii=False) + "\n")
                    continue
                seen.add(rec["id"])
                kept.append(Trajectory.from_dict(rec, str(path), lineno))
    return kept, reasons, total


def is_heldout(traj_id: str, fraction: float, seed: int) -> bool:
    """Split by trajectory with a stable hash, so adding data never moves old records."""
    digest = hashlib.sha256(f"{seed}:{traj_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def write_cpt_shards(tok, docs: list[str], seq_len: int, prefix: Path) -> dict:
    """Tokenize documents, pack them into seq_len sequences (EOS between documents), and write
    them in Megatron's indexed format: one packed sequence per entry."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    buf: list[int] = []
    n_seq = 0
    eos = tok.eos_token_id
    for doc in tqdm(docs, desc=f"pack {prefix.name}", unit="doc"):
        buf.extend(tok.encode(doc, add_special_tokens=False) + [eos])
        while len(buf) >= seq_len:
            builder.add_document(np.array(buf[:seq_len], dtype=np.int32), [seq_len])
            buf = buf[seq_len:]
            n_seq += 1
    real = n_seq * seq_len
    if buf:  # the tail is padded; padding is counted so the real-token share is honest
        pad = [tok.pad_token_id] * (seq_len - len(buf))
        builder.add_document(np.array(buf + pad, dtype=np.int32), [seq_len])
        real += len(buf)
        n_seq += 1
    builder.finalize(str(prefix) + ".idx")
    total = n_seq * seq_len
    return {"sequences": n_seq, "tokens": total, "real_token_fraction": real / max(total, 1)}


def _parquet(rows: list[dict], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def prepare(cfg: DictConfig, paths: RunPaths) -> dict:
    out = paths.root / "prepare"
    inputs = _inputs(cfg, paths)
    fingerprint = _fingerprint(cfg, inputs)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("fingerprint") == fingerprint:
        log.info("prepare: %s is up to date", out)
        return json.loads(manifest_path.read_text())

    tmp = paths.root / "prepare.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tracker = Tracker(cfg, "prepare", tmp)
    allowed = set(cfg.data.domains)
    trajs, reasons, total = load_valid(inputs, allowed, cfg.prepare.min_turns, tmp / "quarantine.jsonl")
    train = [t for t in trajs if not is_heldout(t.id, cfg.data.heldout_fraction, cfg.seed)]
    heldout = [t for t in trajs if is_heldout(t.id, cfg.data.heldout_fraction, cfg.seed)]
    if not train:
        raise ValueError(f"prepare: no valid training trajectories in {', '.join(map(str, inputs))} "
                         f"({total} read, {sum(reasons.values())} quarantined: {dict(reasons)})")
    for name, split in (("train", train), ("heldout", heldout)):
        with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(t.to_json() + "\n" for t in split)

    docs = {name: [render.cpt_document(get_domain(t.domain), t) for t in split]
            for name, split in (("train", train), ("heldout", heldout))}
    if cfg.data.tokenizer:
        tok = load_tokenizer(cfg.data.tokenizer)
        tokenizer_source = cfg.data.tokenizer
    else:
        tok = train_tokenizer(docs["train"], cfg.data.vocab_size, tmp / "tokenizer")
        tokenizer_source = "trained on the train split"

    (tmp / "cpt").mkdir()
    cpt = {name: write_cpt_shards(tok, d, cfg.data.seq_len, tmp / "cpt" / name)
           for name, d in docs.items() if d}

    rng = random.Random(cfg.seed)
    sft_rows, rl_rows, prompt_lens, target_lens = [], [], [], []
    for traj in tqdm(train, desc="render sft/rl", unit="traj"):
        domain = get_domain(traj.domain)
        for t in range(1, len(traj.steps) + 1):
            prompt, answer = render.turn_messages(domain, traj, t, cfg.data.max_history)
            sft_rows.append({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t,
                             "prompt": prompt, "completion": [answer]})
            prompt_lens.append(len(tok.apply_chat_template(prompt, tokenize=True, return_dict=False)))
            target_lens.append(len(tok.encode(answer["content"], add_special_tokens=False)))
        # RL takes one turn per trajectory (multi-turn expansion destabilises RL in the recipe).
        t = rng.randint(1, len(traj.steps))
        prompt, _ = render.turn_messages(domain, traj, t, cfg.data.max_history)
        rl_rows.append({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t,
                        "prompt": prompt, "reference": traj.steps[t - 1].observation})
    _parquet(sft_rows, tmp / "sft.parquet")
    _parquet(rl_rows, tmp / "rl.parquet")

    (tmp / "eval").mkdir()
    eval_counts = Counter()
    for traj in heldout:
        domain = get_domain(traj.domain)
        with open(tmp / "eval" / f"{traj.domain}_test.jsonl", "a", encoding="utf-8") as f:
            for t in range(1, len(traj.steps) + 1):
                rec = render.agentworldbench_record(domain, traj, t, cfg.data.max_history)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                eval_counts[traj.domain] += 1

    manifest = {
        "fingerprint": fingerprint,
        "inputs": [str(p) for p in inputs],
        "records": {"in": total, "kept": len(trajs), "quarantined": sum(reasons.values()),
                    "quarantine_reasons": dict(reasons)},
        "split": {"train": len(train), "heldout": len(heldout)},
        "domains": dict(Counter(t.domain for t in trajs)),
        "tokenizer": {"source": tokenizer_source, "vocab_size": len(tok)},
        "cpt": cpt,
        "sft": {"samples": len(sft_rows), "prompt_tokens_mean": float(np.mean(prompt_lens)),
                "prompt_tokens_max": int(np.max(prompt_lens)),
                "target_tokens_mean": float(np.mean(target_lens)),
                "target_tokens_max": int(np.max(target_lens))},
        "rl": {"prompts": len(rl_rows)},
        "eval": dict(eval_counts),
    }
    assert manifest["records"]["in"] == manifest["records"]["kept"] + manifest["records"]["quarantined"]
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    tracker.finish({k: v for k, v in manifest.items() if k != "fingerprint"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("prepare: %d kept, %d quarantined, %d train / %d held-out -> %s", len(trajs),
             sum(reasons.values()), len(train), len(heldout), out)
    return manifest
