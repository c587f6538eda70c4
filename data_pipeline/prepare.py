"""`lwm prepare`: trajectories in; CPT shards, SFT samples, RL prompts and eval sets out.

validate -> quarantine bad records (with the reason) -> redact secrets -> the recipe's filters
-> exact and near dedup -> decontaminate against eval sets -> split train/held-out by trajectory
-> tokenizer (trained on the train split unless given) -> CPT shards (Megatron .bin/.idx, packed,
with a loss mask by turn type) -> SFT samples and RL prompts (parquet) -> eval sets
(AgentWorldBench JSONL) -> manifest. Counts reconcile: in = kept + quarantined + filtered.

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

from data_pipeline.curate.dedup import Decontaminator, NearDedup, exact_key
from data_pipeline.curate.filters import clean_turns, drop_reason
from data_pipeline.curate.redact import redact_trajectory
from data_pipeline.curate.turn_types import KEEP, classify, token_keep_mask, turn_stats
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


def load_valid(inputs: list[Path], allowed: set[str], quarantine: Path
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


def _malformed_check(domain_name: str):
    """The domain's action check from its collector, when it has one (for retry cycles)."""
    from data_pipeline.collect.base import ActionError, collector_names, get_collector
    if domain_name not in collector_names():
        return None
    try:
        collector = get_collector(domain_name, None)
    except ImportError:
        return None

    def malformed(action: str) -> bool:
        try:
            collector.check_action(action)
            return False
        except ActionError:
            return True
    return malformed


def curate(trajs: list[Trajectory], pcfg) -> tuple[list[Trajectory], dict, Counter, dict]:
    """Redact, filter, dedup and decontaminate. Returns the kept trajectories, which of their
    turns become samples (by id), the filtered counts by reason, and curation statistics."""
    filtered, redactions, turn_stats_ = Counter(), Counter(), Counter()
    decontam = Decontaminator([Path(p) for p in pcfg.decontaminate], pcfg.decontam_ngram) \
        if pcfg.decontaminate else None
    near = NearDedup() if pcfg.dedup_near else None
    exact_seen: set[str] = set()
    checks = {}
    kept, samples = [], {}
    for traj in tqdm(trajs, desc="curate", unit="traj"):
        if pcfg.redact:
            traj = redact_trajectory(traj, redactions)
        if traj.domain not in checks:
            checks[traj.domain] = _malformed_check(traj.domain)
        traj, sample, stats = clean_turns(traj, pcfg.filters, checks[traj.domain])
        turn_stats_.update(stats)
        reason = drop_reason(traj, pcfg.filters)
        if reason is None and not any(sample):
            reason = "no trainable turn"
        if reason is None and pcfg.dedup_exact:
            key = exact_key(traj)
            reason = "exact duplicate" if key in exact_seen else None
            exact_seen.add(key)
        if reason is None and near is not None and near.seen(traj):
            reason = "near duplicate"
        if reason is None and decontam is not None:
            reason = decontam.reason(traj)
        if reason is not None:
            filtered[reason] += 1
            continue
        kept.append(traj)
        samples[traj.id] = sample
    info = {"redactions": dict(redactions), "turns": dict(turn_stats_),
            "decontaminated_against": decontam.files if decontam else []}
    return kept, samples, filtered, info


def is_heldout(traj_id: str, fraction: float, seed: int) -> bool:
    """Split by trajectory with a stable hash, so adding data never moves old records."""
    digest = hashlib.sha256(f"{seed}:{traj_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def cpt_tokens(tok, domain, traj: Trajectory, masked: bool) -> tuple[list[int], list[int], Counter]:
    """A trajectory's CPT token ids and loss mask (1 = predicted). Segments are tokenized one
    by one so every observation's tokens are known; with `masked`, each observation keeps the
    share of its tokens that its turn type earns."""
    ids, mask, kinds = [], [], Counter()
    for text, turn in render.cpt_segments(domain, traj):
        seg = tok.encode(text, add_special_tokens=False)
        keep = [1] * len(seg)
        if masked and turn:
            step = traj.steps[turn - 1]
            previous = traj.steps[turn - 2].observation if turn > 1 else traj.initial_observation
            kind = classify(turn_stats(step.action, step.observation, previous))
            kinds[kind] += 1
            keep = token_keep_mask(len(seg), KEEP[kind], f"{traj.id}:{turn}")
        ids += seg
        mask += keep
    return ids + [tok.eos_token_id], mask + [1], kinds


def write_cpt_shards(tok, trajs: list[Trajectory], seq_len: int, prefix: Path, masked: bool) -> dict:
    """Tokenize trajectories, pack them into seq_len sequences (EOS between documents), and
    write them in Megatron's indexed format, one packed sequence per entry, with a parallel
    uint8 loss-mask dataset (<prefix>_lossmask) aligned token for token."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    mask_builder = IndexedDatasetBuilder(str(prefix) + "_lossmask.bin", dtype=np.uint8)
    buf: list[int] = []
    mbuf: list[int] = []
    n_seq, kinds = 0, Counter()

    def emit(ids, mask):
        builder.add_document(np.array(ids, dtype=np.int32), [seq_len])
        mask_builder.add_document(np.array(mask, dtype=np.uint8), [seq_len])

    for traj in tqdm(trajs, desc=f"pack {prefix.name}", unit="traj"):
        ids, mask, k = cpt_tokens(tok, get_domain(traj.domain), traj, masked)
        kinds.update(k)
        buf += ids
        mbuf += mask
        while len(buf) >= seq_len:
            emit(buf[:seq_len], mbuf[:seq_len])
            buf, mbuf = buf[seq_len:], mbuf[seq_len:]
            n_seq += 1
    real = n_seq * seq_len
    if buf:  # the tail is padded (and never in the loss); padding is counted honestly
        pad = seq_len - len(buf)
        emit(buf + [tok.pad_token_id] * pad, mbuf + [0] * pad)
        real += len(buf)
        n_seq += 1
    builder.finalize(str(prefix) + ".idx")
    mask_builder.finalize(str(prefix) + "_lossmask.idx")
    total = n_seq * seq_len
    return {"sequences": n_seq, "tokens": total, "real_token_fraction": real / max(total, 1),
            "turn_types": dict(kinds)}


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
    valid, reasons, total = load_valid(inputs, allowed, tmp / "quarantine.jsonl")
    trajs, samples, filtered, curation = curate(valid, cfg.prepare)
    train = [t for t in trajs if not is_heldout(t.id, cfg.data.heldout_fraction, cfg.seed)]
    heldout = [t for t in trajs if is_heldout(t.id, cfg.data.heldout_fraction, cfg.seed)]
    if not train:
        raise ValueError(f"prepare: no valid training trajectories in {', '.join(map(str, inputs))} "
                         f"({total} read, {sum(reasons.values())} quarantined: {dict(reasons)}, "
                         f"{sum(filtered.values())} filtered: {dict(filtered)})")
    for name, split in (("train", train), ("heldout", heldout)):
        with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(t.to_json() + "\n" for t in split)

    if cfg.data.tokenizer:
        tok = load_tokenizer(cfg.data.tokenizer)
        tokenizer_source = cfg.data.tokenizer
    else:
        tok = train_tokenizer((render.cpt_document(get_domain(t.domain), t) for t in train),
                              cfg.data.vocab_size, tmp / "tokenizer")
        tokenizer_source = "trained on the train split"

    (tmp / "cpt").mkdir()
    cpt = {name: write_cpt_shards(tok, split, cfg.data.seq_len, tmp / "cpt" / name,
                                  cfg.prepare.cpt_loss_mask)
           for name, split in (("train", train), ("heldout", heldout)) if split}

    rng = random.Random(cfg.seed)
    sft_rows, rl_rows, prompt_lens, target_lens = [], [], [], []
    for traj in tqdm(train, desc="render sft/rl", unit="traj"):
        domain = get_domain(traj.domain)
        turns = [t for t in range(1, len(traj.steps) + 1) if samples[traj.id][t - 1]]
        for t in turns:
            variant = rng.randrange(render.FIRST_SFT_VARIANT, len(domain.PROMPT_VARIANTS))
            prompt, answer = render.turn_messages(domain, traj, t, cfg.data.max_history, variant)
            sft_rows.append({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t,
                             "prompt_variant": variant, "prompt": prompt, "completion": [answer]})
            prompt_lens.append(len(tok.apply_chat_template(prompt, tokenize=True, return_dict=False)))
            target_lens.append(len(tok.encode(answer["content"], add_special_tokens=False)))
        # RL takes one turn per trajectory (multi-turn expansion destabilises RL in the recipe).
        t = rng.choice(turns)
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
            for t in (t for t in range(1, len(traj.steps) + 1) if samples[traj.id][t - 1]):
                rec = render.agentworldbench_record(domain, traj, t, cfg.data.max_history)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                eval_counts[traj.domain] += 1

    manifest = {
        "fingerprint": fingerprint,
        "inputs": [str(p) for p in inputs],
        "records": {"in": total, "kept": len(trajs), "quarantined": sum(reasons.values()),
                    "filtered": sum(filtered.values()), "quarantine_reasons": dict(reasons),
                    "filter_reasons": dict(filtered)},
        "curation": curation,
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
    counts = manifest["records"]
    assert counts["in"] == counts["kept"] + counts["quarantined"] + counts["filtered"], counts
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    tracker.finish({k: v for k, v in manifest.items() if k != "fingerprint"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("prepare: %d kept, %d quarantined, %d filtered, %d train / %d held-out -> %s",
             len(trajs), sum(reasons.values()), sum(filtered.values()), len(train), len(heldout), out)
    return manifest
