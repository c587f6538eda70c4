"""The eval report: a markdown table per mode, PNG plots (per-domain bars, stage comparison,
score distributions) and the comparison of several runs (a sweep) in one table.

    python -m eval.report runs/lr_sweep-sweep/job0 runs/lr_sweep-sweep/job1   # one table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADLINE = {"rule": "rule-verifier score (x100)", "judge": "judge rubric total (0-100)",
            "turing": "Turing test: judge fooled (%)", "reference": "reference comparison: win rate (%)"}


def headline(m: dict) -> tuple[dict[str, float | None], float | None, float | None]:
    """Per-domain headline scores (0-100), micro and macro of one model's metrics."""
    mode = m.get("mode", "rule")
    if mode == "rule":
        return ({d: 100 * e["score"] for d, e in m["domains"].items()}, 100 * m["micro"], 100 * m["macro"])
    key = {"judge": "total_score", "turing": "fooled", "reference": "win"}[mode]
    agg = m[mode]
    return {d: e[key] for d, e in agg["domains"].items()}, agg["micro"], agg["macro"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per model, a column per domain, then micro (the mean over samples: what
    the benchmark's script prints as "Overall") and macro (the mean over domains: the paper's
    table), and valid/failed counts for judged modes."""
    heads = {name: headline(m) for name, m in results.items()}
    domains = sorted({d for per, _, _ in heads.values() for d in per})
    judged = any(m.get("mode", "rule") != "rule" for m in results.values())
    # The benchmark's script prints the mean over samples as "Overall"; the paper's table
    # averages the domains. Both, each named for what it is.
    cols = domains + ["micro (official script's Overall)", "macro (paper table)"] + \
        (["valid", "failed"] if judged else [])
    lines = ["| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, (per, micro, macro) in heads.items():
        cells = [_fmt(per.get(d)) for d in domains] + [_fmt(micro), _fmt(macro)]
        if judged:
            agg = results[name].get(results[name].get("mode", "rule"), {})
            cells += [str(agg.get("valid", "-")), str(agg.get("failed", "-"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rule_detail(results: dict[str, dict]) -> str:
    """Every rule metric of every model, over all samples (x100)."""
    from eval.score import RULE_METRICS
    lines = ["| model | " + " | ".join(RULE_METRICS) + " |", "|" + "---|" * (len(RULE_METRICS) + 1)]
    for name, m in results.items():
        o = m.get("overall", {})
        lines.append(f"| {name} | " + " | ".join(
            _fmt(None if o.get(k) is None else 100 * o[k]) for k in RULE_METRICS) + " |")
    return "\n".join(lines)


def controllability_table(results: dict[str, dict]) -> str:
    """Share of observations (x100) that obey each perturbation, per model and domain."""
    rows = [(name, d, v) for name, m in results.items()
            for d, v in sorted((m.get("controllability") or {}).items())]
    if not rows:
        return ""
    kinds = sorted({k for _, _, v in rows for k in v if k != "samples"})
    lines = ["| model | domain | " + " | ".join(kinds) + " | samples |", "|" + "---|" * (len(kinds) + 3)]
    for name, d, v in rows:
        lines.append(f"| {name} | {d} | " + " | ".join(_fmt(100 * v[k]) if k in v else "-" for k in kinds)
                     + f" | {v['samples']} |")
    return "\n".join(lines)


def plots(results: dict[str, dict], per_sample: dict[str, list[float]], out: Path) -> list[Path]:
    """Per-domain bars, stage comparison and score distributions as PNGs under out/."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    import numpy as np

    heads = {name: headline(m) for name, m in results.items()}
    domains = sorted({d for per, _, _ in heads.values() for d in per})
    label = HEADLINE[next(iter(results.values())).get("mode", "rule")]
    files = []

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(domains) * max(1, len(heads)) ** 0.5), 3.5))
    width = 0.8 / max(1, len(heads))
    for i, (name, (per, _, _)) in enumerate(heads.items()):
        ax.bar(np.arange(len(domains)) + i * width, [per.get(d) or 0 for d in domains], width, label=name)
    ax.set_xticks(np.arange(len(domains)) + width * (len(heads) - 1) / 2, domains)
    ax.set_ylabel(label)
    ax.set_title("per-domain scores")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "per_domain.png"))

    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(heads)), 3.2))
    names = list(heads)
    ax.plot(names, [heads[n][2] or 0 for n in names], "o-", label="macro")
    ax.plot(names, [heads[n][1] or 0 for n in names], "s--", label="micro")
    ax.set_ylabel(label)
    ax.set_title("models / stages compared")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "stages.png"))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, vals in per_sample.items():
        if vals:
            ax.hist(vals, bins=20, range=(0, 100), alpha=0.5, label=name)
    ax.set_xlabel("per-sample score (0-100)")
    ax.set_ylabel("samples")
    ax.set_title("score distributions")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "distribution.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def compare_runs(run_dirs: list[str | Path]) -> str:
    """One table over several runs' eval results (rows 'run/model'), e.g. a sweep's jobs."""
    merged = {}
    for run in map(Path, run_dirs):
        metrics = run / "eval" / "metrics.json"
        if not metrics.exists():
            raise FileNotFoundError(f"{metrics} does not exist: run `lwm eval` in {run} first")
        for model, m in json.loads(metrics.read_text())["results"].items():
            merged[f"{run.name}/{model}"] = m
    return table(merged)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m eval.report RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        sys.exit(2)
    print(compare_runs(argv))


if __name__ == "__main__":
    main()
