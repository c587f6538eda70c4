"""Scores: judgements aggregated as AgentWorldBench does, and the offline rule metrics.

Judge (per sample, the benchmark's judged-file layout): five dimensions scored 1-5, 0 meaning
invalid; the sample's total is the mean of its valid dimensions; a failed judgement has
`failed` = 1. Per domain, each dimension and the total are averaged over valid samples whose
value is not 0, then normalised to 0-100 as (raw - 1) / 4 * 100. The benchmark's script prints the MICRO mean over
samples as "Overall"; the paper's table uses the MACRO mean over domains; both are reported,
each labelled. The A/B modes
(Turing test, reference comparison) report the rate of wins per domain, micro and macro.

Rule (no judge): the domain's verifier plus similarity (chrF, ROUGE-L, BLEU-4: our own code,
counted in numpy and rapidfuzz), error handling (does the prediction fail where the real
environment failed) and long-context consistency (are the identifiers the real observation
carries over from earlier turns kept).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from statistics import mean

import numpy as np
from rapidfuzz.distance import LCSseq

from lwm.domains import Domain
from lwm.endpoints.judge import DIMENSIONS

INVALID = 0

_NO_RESULT = re.compile(r"(?i)(no (results?|matches|items|entries|records)|nothing found|"
                        r"0 results|empty|\[\]|\{\})")
_PAGE = re.compile(r"(?i)(page \d+|next page|more results|\d+\s*(of|/)\s*\d+|next_page|cursor|"
                   r"showing \d+|truncated)")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SALIENT = re.compile(r"[\w./-]*[\d_./][\w./-]*|\"[^\"\n]{3,40}\"")


def normalize(raw: float) -> float:
    return (raw - 1) / 4 * 100


def aggregate_judged(rows: list[dict], domain_key=lambda r: str(r["task"]).split("/")[-1]) -> dict:
    """Per-domain normalised dimension means and totals, valid/failed counts, micro and macro."""
    by_domain = defaultdict(list)
    for r in rows:
        by_domain[domain_key(r)].append(r)
    domains, totals = {}, []
    for d in sorted(by_domain):
        rs = by_domain[d]
        valid = [r for r in rs if float(r.get("failed", 1.0)) == 0.0]
        entry = {"samples": len(rs), "valid": len(valid), "failed": len(rs) - len(valid)}
        for dim in DIMENSIONS + ("total_score",):
            vals = [float(r.get(dim, INVALID)) for r in valid if float(r.get(dim, INVALID)) != INVALID]
            entry[dim] = round(normalize(mean(vals)), 6) if vals else None
            if dim == "total_score":
                totals += vals
        domains[d] = entry
    scored = [e["total_score"] for e in domains.values() if e["total_score"] is not None]
    return {"domains": domains, "samples": len(rows), "valid": len(totals),
            "failed": len(rows) - len(totals),
            "micro": normalize(mean(totals)) if totals else None,
            "macro": mean(scored) if scored else None}


def aggregate_ab(rows: list[dict], key: str) -> dict:
    """Per-domain rate (x100) of `key` (fooled / win) over valid judgements, micro and macro."""
    by = defaultdict(list)
    for r in rows:
        by[r["task"]].append(r)
    domains = {}
    for d, rs in sorted(by.items()):
        valid = [r[key] for r in rs if r.get("failed") == 0.0]
        domains[d] = {"samples": len(rs), "valid": len(valid), "failed": len(rs) - len(valid),
                      key: 100 * mean(valid) if valid else None}
    vals = [r[key] for r in rows if r.get("failed") == 0.0]
    scored = [e[key] for e in domains.values() if e[key] is not None]
    return {"domains": domains, "samples": len(rows), "valid": len(vals),
            "failed": len(rows) - len(vals), "micro": 100 * mean(vals) if vals else None,
            "macro": mean(scored) if scored else None}


# ---- similarity: chrF, ROUGE-L, BLEU-4 as defined below, counted natively ----
# Rule mode scores every benchmark sample and RL rollout, so the counting runs in native code:
# n-grams as packed integer codes in numpy (not dicts of substrings), the LCS by rapidfuzz
# (bit-parallel and exact) on token ids, means rounded once as statistics.mean rounds them.
# The values are those of the plain Counter/dynamic-programming definitions to the last bit:
# bench/bench_score.py keeps that code, and compares and times both.

_TAG = 56           # an n-gram's code: its order k from this bit on, its items below
_TRUE, _ZERO = np.ones(1, bool), np.zeros(1, np.int64)


def _mean(xs: list[float]) -> float:
    """statistics.mean of floats (their exact sum over n, rounded once), without Fractions."""
    ratios = [x.as_integer_ratio() for x in xs]
    den = max(d for _, d in ratios)                  # powers of two: the largest is a multiple
    return sum(num * (den // d) for num, d in ratios) / (den * len(xs))


@functools.lru_cache(maxsize=64)
def _packing(n: int, bits: int):
    """For windows of n fields of bits + 1 bits (an item, and above it the side bit): the
    weights that pack a window into one code (first field highest), the shifts that cut it to
    its k-field prefix (k = 1..n), the order tags, where each order's codes end, the side bit,
    the mask that clears every field's side bit, and the pads that end each side."""
    width = bits + 1
    weights = np.array([1 << (width * (n - 1 - j)) for j in range(n)], np.uint64)
    shifts = np.array([[width * (n - k)] for k in range(1, n + 1)], np.uint64)
    tags = np.array([[k << _TAG] for k in range(1, n + 1)], np.uint64)
    side = 1 << bits
    no_side = ~sum(side << (width * j) for j in range(n)) & (1 << 64) - 1
    ends = np.array([(k + 1) << _TAG for k in range(1, n + 1)], np.uint64)
    return (weights, shifts, tags, ends, np.uint64(side), np.uint64(no_side),
            np.zeros(n, np.uint64), np.full(n, side - 1, np.uint64))


@functools.lru_cache(maxsize=32)
def _window_index(n: int, rows: int) -> np.ndarray:
    """Row i: i, i+1, ..., i+n-1 (rows a power of two, sliced to the length needed)."""
    return np.arange(rows)[:, None] + np.arange(n)


def _ngram_matches(x: np.ndarray, y: np.ndarray, n: int, bits: int) -> list[int]:
    """For k = 1..n, the clipped matches of x and y: the sum over k-grams of min(count in x,
    count in y). x, y: item codes in [1, 2**bits - 2]; (bits + 1) * n <= _TAG, n < 255.

    Both sequences go through one sort of whole windows: y's items carry a side bit, and each
    side ends in n pad items (x: 0, y: 2**bits - 1, so the prefixes that run past an end match
    nothing). A k-gram is the k-field prefix of the window at its first item, so sorting the
    windows sorts each order by (side, gram) with no further sort."""
    weights, shifts, tags, ends, side, no_side, x_pad, y_pad = _packing(n, bits)
    z = np.concatenate((x, x_pad, y | side, y_pad))
    m = len(z) - n
    windows = np.sort(z[_window_index(n, 1 << (m - 1).bit_length())[:m]] @ weights)
    grams = ((windows[n:] >> shifts) | tags).ravel()   # x's n pad windows sort first: cut
    edges = np.flatnonzero(np.concatenate((_TRUE, grams[1:] != grams[:-1], _TRUE)))
    counts = edges[1:] - edges[:-1]
    grams = grams[edges[:-1]] & no_side             # per order: x's grams, then y's, each sorted
    order = np.argsort(grams, kind="stable")        # sorted runs: merged in linear time
    grams, counts = grams[order], counts[order]
    # a gram both sides hold is two neighbours, one of each; orders are contiguous (by tag)
    matched = np.minimum(counts[1:], counts[:-1]) * (grams[1:] == grams[:-1])
    upto = np.concatenate((_ZERO, np.cumsum(matched)))[grams[1:].searchsorted(ends)].tolist()
    return [upto[0]] + [upto[k] - upto[k - 1] for k in range(1, n)]


def _ngram_matches_py(x, y, n: int) -> list[int]:
    """The same counts with Counters, for vocabularies too large to pack."""
    hits = []
    for k in range(1, n + 1):
        p = Counter(tuple(x[i:i + k]) for i in range(len(x) - k + 1))
        r = Counter(tuple(y[i:i + k]) for i in range(len(y) - k + 1))
        hits.append(sum((p & r).values()))
    return hits


def _matches(x, y, n: int, vocab: int) -> list[int]:
    """Clipped k-gram matches, k = 1..n, of two sequences of ids in [1, vocab]."""
    bits = (vocab + 1).bit_length()
    if (bits + 1) * n > _TAG or n + 1 >= 1 << (64 - _TAG):
        return _ngram_matches_py(x, y, n)
    return _ngram_matches(np.asarray(x, np.uint64), np.asarray(y, np.uint64), n, bits)


def _ids(a, b) -> tuple[list[int], list[int], int]:
    """Two sequences as ids in [1, size of their joint vocabulary], and that size."""
    vocab = {t: i for i, t in enumerate(set(a) | set(b), 1)}
    return list(map(vocab.__getitem__, a)), list(map(vocab.__getitem__, b)), len(vocab)


def chrf(pred: str, ref: str, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (chrF, n = 1..6, recall weighted by beta), in [0, 1]."""
    pred, ref = " ".join(pred.split()), " ".join(ref.split())   # = re.sub(r"\s+", " ", strip)
    if not pred and not ref:
        return 1.0
    if pred.isascii() and ref.isascii():            # the bytes + 1 are ids already
        x, y, vocab = (np.frombuffer(pred.encode(), np.uint8) + np.uint64(1),
                       np.frombuffer(ref.encode(), np.uint8) + np.uint64(1), 128)
    else:
        x, y, vocab = _ids(pred, ref)
    hits = _matches(x, y, n, vocab)
    precisions, recalls = [], []
    for k, hit in enumerate(hits, 1):
        p, r = len(pred) - k + 1, len(ref) - k + 1
        if p > 0 and r > 0:                         # orders both texts are long enough for
            precisions.append(hit / p)
            recalls.append(hit / r)
    if not precisions:
        return 0.0
    P, R = _mean(precisions), _mean(recalls)
    return 0.0 if P + R == 0 else (1 + beta ** 2) * P * R / (beta ** 2 * P + R)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def rouge_l(pred: str, ref: str, cap: int = 400) -> float:
    """ROUGE-L F1 over word/punctuation tokens (LCS; the first `cap` tokens of each)."""
    return _rouge_l(*_ids(_tokens(pred), _tokens(ref))[:2], cap)


def _rouge_l(a: list[int], b: list[int], cap: int = 400) -> float:
    """ROUGE-L of two token-id sequences (ids, not strings: LCSseq compares them exactly)."""
    a, b = a[:cap], b[:cap]
    if not a or not b:
        return float(a == b)
    lcs = LCSseq.similarity(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def bleu(pred: str, ref: str, n: int = 4) -> float:
    """Sentence BLEU-4 with add-one smoothing of the higher orders and the brevity penalty."""
    return _bleu(*_ids(_tokens(pred), _tokens(ref)), n)


def _bleu(a: list[int], b: list[int], vocab: int, n: int = 4) -> float:
    """BLEU of two token-id sequences with ids in [1, vocab]."""
    if not a or not b:
        return float(a == b)
    logs = []
    for k, hit in enumerate(_matches(a, b, n, vocab), 1):
        total = max(len(a) - k + 1, 0)
        if k > 1:
            hit, total = hit + 1, total + 1
        if hit == 0 or total == 0:
            return 0.0
        logs.append(math.log(hit / total))
    bp = 1.0 if len(a) > len(b) else math.exp(1 - len(b) / len(a))
    return bp * math.exp(_mean(logs))


# ---- behaviour checks ----

def has_error(text: str, domain=None) -> bool:
    """The domain's error detection (Domain.is_error); without a domain, the generic one."""
    return (domain or Domain()).is_error(text)


def long_context_consistency(pred: str, ref: str, history: str) -> float | None:
    """Share of the identifiers (paths, names with digits, quoted strings) that the real
    observation repeats from earlier turns and the prediction also repeats; None when the real
    observation repeats none."""
    carried = {t for t in _SALIENT.findall(ref) if len(t) >= 3 and t in history}
    if not carried:
        return None
    return sum(t in pred for t in carried) / len(carried)


def follows_instruction(kind: str, observation: str, domain=None) -> bool:
    """Whether an observation shows a perturbation asked of the world model (controllability)."""
    if kind == "error":
        return has_error(observation, domain)
    if kind == "withhold":
        return not observation.strip() or bool(_NO_RESULT.search(observation))
    if kind == "paginate":
        return bool(_PAGE.search(observation))
    raise ValueError(f"unknown perturbation kind '{kind}'")


RULE_METRICS = ("score", "format", "content", "exact", "chrf", "rouge_l", "bleu", "error_match",
                "error_recall", "consistency")


def rule_row(domain, prediction_obs: str, raw_prediction: str, reference: str, history: str) -> dict:
    """Every rule metric of one sample; a metric that does not apply is None."""
    verdict = domain.verify(raw_prediction, reference).as_dict()
    ref_err, pred_err = has_error(reference, domain), has_error(prediction_obs, domain)
    pred_ids, ref_ids, vocab = _ids(_tokens(prediction_obs), _tokens(reference))
    return {**verdict, "chrf": chrf(prediction_obs, reference),
            "rouge_l": _rouge_l(pred_ids, ref_ids), "bleu": _bleu(pred_ids, ref_ids, vocab),
            "error_match": float(ref_err == pred_err),
            "error_recall": float(pred_err) if ref_err else None,
            "consistency": long_context_consistency(prediction_obs, reference, history)}


def aggregate_rule(rows: list[dict]) -> dict:
    """Per-domain means of every rule metric (over the samples where it applies), micro, macro."""
    by_domain = defaultdict(list)
    for r in rows:
        by_domain[r["task"]].append(r)

    def means(rs):
        out = {"samples": len(rs)}
        for k in RULE_METRICS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            out[k] = float(mean(vals)) if vals else None
        return out

    domains = {d: means(rs) for d, rs in sorted(by_domain.items())}
    return {"domains": domains, "samples": len(rows),
            "micro": float(mean(r["score"] for r in rows)) if rows else 0.0,
            "macro": float(mean(m["score"] for m in domains.values())) if rows else 0.0,
            "overall": means(rows) if rows else {}}


if __name__ == "__main__":  # python -m eval.score judged.jsonl: the benchmark's aggregation
    import json
    import sys
    rows = [json.loads(l) for p in sys.argv[1:] for l in open(p, encoding="utf-8") if l.strip()]
    agg = aggregate_judged(rows)
    for d, e in agg["domains"].items():
        print(f"--- {d} ({e['valid']}/{e['samples']} valid, {e['failed']} failed) ---")
        for k in DIMENSIONS + ("total_score",):
            print(f"  {k:>15s}: " + ("-" if e[k] is None else f"{e[k]:.2f}"))
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    print(f"Overall (the benchmark script's: micro, mean over samples): {fmt(agg['micro'])}\n"
          f"Macro (the paper table's: mean over domains): {fmt(agg['macro'])}\n"
          f"valid {agg['valid']}, failed {agg['failed']}")
