"""Scores: judgements aggregated as AgentWorldBench does, and the offline rule metrics.

Judge (per sample, the benchmark's judged-file layout): five dimensions scored 1-5, 0 meaning
invalid; the sample's total is the mean of its valid dimensions; a failed judgement has
`failed` = 1. Per domain, each dimension and the total are averaged over valid samples whose
value is not 0, then normalised to 0-100 as (raw - 1) / 4 * 100. The benchmark's script prints the MICRO mean over
samples as "Overall"; the paper's table uses the MACRO mean over domains; both are reported,
each labelled. The A/B modes
(Turing test, reference comparison) report the rate of wins per domain, micro and macro.

Rule (no judge): the domain's verifier plus similarity (chrF, ROUGE-L, BLEU-4, our own code),
error handling (does the prediction fail where the real environment failed) and long-context
consistency (are the identifiers the real observation carries over from earlier turns kept).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from statistics import mean

from lwm.domains import Domain
from lwm.endpoints.judge import DIMENSIONS

INVALID = 0

_NO_RESULT = re.compile(r"(?i)(no (results?|matches|items|entries|records)|nothing found|"
                        r"0 results|empty|\[\]|\{\})")
_PAGE = re.compile(r"(?i)(page \d+|next page|more results|\d+\s*(of|/)\s*\d+|next_page|cursor|"
                   r"showing \d+|truncated)")
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


# ---- similarity, computed here so rule mode needs nothing beyond the standard library ----

def chrf(pred: str, ref: str, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (chrF, n = 1..6, recall weighted by beta), in [0, 1]."""
    pred, ref = re.sub(r"\s+", " ", pred.strip()), re.sub(r"\s+", " ", ref.strip())
    if not pred and not ref:
        return 1.0
    precisions, recalls = [], []
    for k in range(1, n + 1):
        p = Counter(pred[i:i + k] for i in range(len(pred) - k + 1))
        r = Counter(ref[i:i + k] for i in range(len(ref) - k + 1))
        if not p or not r:
            continue
        hit = sum((p & r).values())
        precisions.append(hit / sum(p.values()))
        recalls.append(hit / sum(r.values()))
    if not precisions:
        return 0.0
    P, R = mean(precisions), mean(recalls)
    return 0.0 if P + R == 0 else (1 + beta ** 2) * P * R / (beta ** 2 * P + R)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def rouge_l(pred: str, ref: str, cap: int = 400) -> float:
    """ROUGE-L F1 over word/punctuation tokens (LCS; the first `cap` tokens of each)."""
    a, b = _tokens(pred)[:cap], _tokens(ref)[:cap]
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def bleu(pred: str, ref: str, n: int = 4) -> float:
    """Sentence BLEU-4 with add-one smoothing of the higher orders and the brevity penalty."""
    a, b = _tokens(pred), _tokens(ref)
    if not a or not b:
        return float(a == b)
    logs = []
    for k in range(1, n + 1):
        p = Counter(tuple(a[i:i + k]) for i in range(len(a) - k + 1))
        r = Counter(tuple(b[i:i + k]) for i in range(len(b) - k + 1))
        hit, total = sum((p & r).values()), max(sum(p.values()), 0)
        if k > 1:
            hit, total = hit + 1, total + 1
        if hit == 0 or total == 0:
            return 0.0
        logs.append(math.log(hit / total))
    bp = 1.0 if len(a) > len(b) else math.exp(1 - len(b) / len(a))
    return bp * math.exp(mean(logs))


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
    return {**verdict, "chrf": chrf(prediction_obs, reference),
            "rouge_l": rouge_l(prediction_obs, reference), "bleu": bleu(prediction_obs, reference),
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
