"""The eval report: a markdown table per mode, PNG plots (per-domain bars, stage comparison,
score distributions) and the comparison of several runs (a sweep) in one table.

    python -m eval.report runs/lr_sweep-sweep/job*  --out runs/lr_sweep-sweep/report
    # one table, rows labelled by the settings that differ between the runs (sft.lr=...), and a
    # plot per differing setting
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lwm.identity import flat

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


def _cell(v, ci=None, sign: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:{sign}.2f}" + (f" [{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]" if ci else "")


# ---- confidence intervals: percentile bootstrap over samples, resampled within each domain ----

Scored = list[tuple[str, str, float]]   # (sample id, domain, score 0-100) of one model


def _by_domain(scored: Scored) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for _, d, v in scored:
        out.setdefault(d, []).append(v)
    return {d: np.asarray(v, float) for d, v in sorted(out.items())}


def _resampled_means(by_domain: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Each domain's mean over `resamples` resamples of its samples (with replacement); the
    generator is seeded per domain, so two models with the same samples draw the same indices."""
    out = {}
    for d, v in by_domain.items():
        rng = np.random.default_rng([seed, *d.encode()])
        out[d] = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    return out


def _interval(draws: np.ndarray) -> list[float]:
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def intervals(scored: Scored, resamples: int, seed: int) -> dict:
    """95% percentile-bootstrap intervals of a model's per-domain means, micro and macro (the
    samples resampled within each domain, the domains kept), with each domain's sample count."""
    by = _by_domain(scored)
    out = {"samples": {d: len(v) for d, v in by.items()}, "resamples": resamples, "seed": seed}
    if resamples <= 0 or not by:
        return out
    draws = _resampled_means(by, resamples, seed)
    n = sum(len(v) for v in by.values())
    out["domains"] = {d: _interval(m) for d, m in draws.items()}
    out["macro"] = _interval(np.mean(list(draws.values()), axis=0))
    out["micro"] = _interval(sum(m * len(by[d]) for d, m in draws.items()) / n)
    return out


def gains(per_sample: dict[str, Scored], resamples: int, seed: int) -> dict[str, dict]:
    """Each model against the one before it (init -> cpt -> sft -> rl): the mean per-sample
    difference per domain and over domains (macro), on the samples both answered, with a paired
    95% bootstrap interval (the same resampled samples on both sides)."""
    names, out = list(per_sample), {}
    for before, after in zip(names, names[1:]):
        a = {i: (d, v) for i, d, v in per_sample[before]}
        diff = [(i, d, v - a[i][1]) for i, d, v in per_sample[after] if i in a]
        by = _by_domain(diff)
        if not by:
            continue
        entry = {"domains": {d: float(v.mean()) for d, v in by.items()},
                 "macro": float(np.mean([v.mean() for v in by.values()])),
                 "samples": {d: len(v) for d, v in by.items()}}
        if resamples > 0:
            draws = _resampled_means(by, resamples, seed)
            entry["ci"] = {d: _interval(m) for d, m in draws.items()}
            entry["macro_ci"] = _interval(np.mean(list(draws.values()), axis=0))
        out[f"{after} - {before}"] = entry
    return out


def gains_table(steps: dict[str, dict]) -> str:
    """Markdown: one row per step between models, the mean gain per domain and macro with its
    paired interval; a step whose interval lies above 0 is an ordering the data supports."""
    if not steps:
        return ""
    domains = sorted({d for e in steps.values() for d in e["domains"]})
    lines = ["| step | " + " | ".join(domains) + " | macro |", "|" + "---|" * (len(domains) + 2)]
    for name, e in steps.items():
        ci = e.get("ci", {})
        cells = [_cell(e["domains"].get(d), ci.get(d), "+") for d in domains]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(e['macro'], e.get('macro_ci'), '+')} |")
    return "\n".join(lines)


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per model, a column per domain, then micro (the mean over samples: what
    the benchmark's script prints as "Overall") and macro (the mean over domains: the paper's
    table), and valid/failed counts for judged modes. With intervals recorded (`ci`), each cell
    carries its 95% bootstrap interval and a first row counts each domain's samples."""
    heads = {name: headline(m) for name, m in results.items()}
    domains = sorted({d for per, _, _ in heads.values() for d in per})
    judged = any(m.get("mode", "rule") != "rule" for m in results.values())
    # The benchmark's script prints the mean over samples as "Overall"; the paper's table
    # averages the domains. Both, each named for what it is.
    cols = domains + ["micro (official script's Overall)", "macro (paper table)"] + \
        (["valid", "failed"] if judged else [])
    lines = ["| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    counts = [m["ci"]["samples"] for m in results.values() if m.get("ci")]
    if counts:
        n = {d: "/".join(sorted({str(c[d]) for c in counts if d in c})) or "-" for d in domains}
        total = "/".join(sorted({str(sum(c.values())) for c in counts}))
        lines.append("| samples (n) | " + " | ".join(n[d] for d in domains) + f" | {total} | {total} |"
                     + (" | |" if judged else ""))
    for name, (per, micro, macro) in heads.items():
        ci = results[name].get("ci") or {}
        cells = [_cell(per.get(d), ci.get("domains", {}).get(d)) for d in domains] + \
            [_cell(micro, ci.get("micro")), _cell(macro, ci.get("macro"))]
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


def plots(results: dict[str, dict], per_sample: dict[str, Scored], out: Path) -> list[Path]:
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
    for name, scored in per_sample.items():
        vals = [v for _, _, v in scored]
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


# Keys that name or place a run, never what it trained: not a difference between runs.
_NOT_SETTINGS = ("run_name", "run_dir", "stage", "eval.compare_stages", "eval.checkpoint", "wandb.",
                 "reuse.", "cluster.", "hydra")


def recorded_settings(run: Path) -> dict:
    """What a run recorded it ran with (eval/config.yaml, written by `lwm eval`), flattened."""
    path = run / "eval" / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run's eval predates recorded settings; "
                                f"rerun `lwm eval` in {run} to label it by its settings")
    import yaml
    return {k: v for k, v in flat(yaml.safe_load(path.read_text()) or {}).items()
            if not k.startswith(_NOT_SETTINGS)}


def run_labels(runs: list[Path]) -> tuple[dict[Path, str], list[str]]:
    """Each run's label: the settings that distinguish it from the other runs (`k=v, ...`, read
    from what each run recorded), and the list of those keys. Runs that recorded the same
    settings are told apart by their folders."""
    settings = {r: recorded_settings(r) for r in runs}
    keys = sorted({k for s in settings.values() for k in s
                   if len({json.dumps(t.get(k), sort_keys=True, default=str) for t in settings.values()}) > 1})
    labels = {r: ", ".join(f"{k}={settings[r].get(k)}" for k in keys) or r.name for r in runs}
    seen: dict[str, int] = {}
    for r in runs:
        seen[labels[r]] = seen.get(labels[r], 0) + 1
    for r in runs:
        if seen[labels[r]] > 1:
            labels[r] = f"{labels[r]} ({r})" if keys else str(r)
    return labels, keys


def compare_runs(run_dirs: list[str | Path], out: Path | None = None) -> str:
    """One report over several runs' eval results, e.g. a sweep's jobs: rows `<settings> / model`
    labelled by the settings that differ between the runs, the headline table and the rule
    metrics, and (with `out`) a plot of the macro score against each setting that differs."""
    runs = [Path(r) for r in run_dirs]
    merged, per_run = {}, {}
    for run in runs:
        metrics = run / "eval" / "metrics.json"
        if not metrics.exists():
            raise FileNotFoundError(f"{metrics} does not exist: run `lwm eval` in {run} first")
        per_run[run] = json.loads(metrics.read_text())["results"]
    labels, keys = run_labels(runs) if len(runs) > 1 else ({runs[0]: runs[0].name}, [])
    for run in runs:
        for model, m in per_run[run].items():
            merged[f"{labels[run]} / {model}"] = m
    parts = [table(merged), "", "Rule metrics, all answered samples (x100):", "", rule_detail(merged)]
    if keys:
        parts[:0] = [f"Runs differ in: {', '.join(keys)}", ""]
    if out is not None and keys:
        files = knob_plots(runs, per_run, keys, out)
        parts += ["", "Plots: " + ", ".join(str(f) for f in files)]
    return "\n".join(parts)


def knob_plots(runs: list[Path], per_run: dict, keys: list[str], out: Path) -> list[Path]:
    """One PNG per setting that differs: each model's macro score against the setting's value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    settings = {r: recorded_settings(r) for r in runs}
    files = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        models = sorted({m for r in runs for m in per_run[r]})
        values = sorted({str(settings[r].get(key)) for r in runs},
                        key=lambda v: (0, float(v)) if _number(v) else (1, v))
        for model in models:
            points = [(values.index(str(settings[r].get(key))), headline(per_run[r][model])[2])
                      for r in runs if model in per_run[r]]
            ax.plot([p[0] for p in points], [p[1] or 0 for p in points], "o", label=model)
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(key)
        ax.set_ylabel("macro " + HEADLINE[next(iter(per_run[runs[0]].values())).get("mode", "rule")])
        ax.legend(fontsize=8)
        files.append(_save(fig, out / f"knob_{key.replace('/', '_')}.png"))
    return files


def _number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m eval.report RUN_DIR [RUN_DIR ...] [--out DIR]\n"
              "One table over the runs' eval results, rows labelled by the settings that differ "
              "between them;\nwith --out, a plot per differing setting and report.md there.",
              file=sys.stderr)
        sys.exit(2)
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    report = compare_runs(argv, out)
    if out is not None:
        (out / "report.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
