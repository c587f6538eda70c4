"""`lwm eval`: predict on AgentWorldBench-format sets, score, report.

Reads per-domain `*_test.jsonl` files (the public benchmark's or our held-out sets); predicts
each sample's next observation with a local checkpoint (batched) or an OpenAI-compatible
endpoint (eval.endpoint.base_url: concurrent, retried); parses the prediction as the benchmark
does (reasoning removed, the last <predicted_observation> block, else the whole text). Rule
metrics are always computed (offline); eval.mode=judge|turing|reference adds an LLM judge.
Predictions and judgements are appended as they are made, so a killed eval resumes where it
stopped; they are kept per model identity (eval/models.py), never by folder name. A sample the
endpoint did not answer and a failed judgement are left out of the score, counted in the report
and asked again on the next run. `lwm run` scores every stage's model on the same set and ends
with one table: per-domain sample counts, each score with its 95% bootstrap interval, and each
stage's paired gain over the one before it. A stage model is asked in the format it trained on
(eval/generate.py: CPT documents for init and cpt, chat for sft and rl), within its trained length.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from statistics import mean

from omegaconf import DictConfig, OmegaConf

from eval.data import load_eval_set
from eval.generate import predict_endpoint, predict_local, prompt_format, read_done
from eval.models import endpoint_identity, label, local_identity, model_dir
from eval.report import HEADLINE, controllability_table, gains, gains_table, intervals, plots, rule_detail, table
from eval.score import aggregate_ab, aggregate_judged, aggregate_rule, follows_instruction, rule_row
from lwm.domains import domain_names, extract_observation, get_domain, register_extra
from lwm.domains.base import observation_for_judge
from lwm.endpoints.judge import Prompts, judge_all
from lwm.endpoints.sample import Sample, view
from lwm.identity import digest
from lwm.tracking import RunPaths, Tracker, write_metrics
from lwm.world_env import PERTURBATIONS, with_instruction

log = logging.getLogger("lwm.eval")
STAGE_MODELS = ("init", "cpt", "sft", "rl")
MODES = ("rule", "judge", "turing", "reference")


def judge_item(s: Sample, gen: str) -> dict:
    """What the judge is asked about one sample: its history, current turn and reference, the
    model's raw generation, and the prediction cleaned as the benchmark cleans it."""
    return {"task": s.domain, "id": s.id, "turn_idx": s.turn_idx, "history": s.history,
            "current": s.current, "reference": s.reference, "gen": gen,
            "prediction": observation_for_judge(gen)}


def score_predictions(ev, samples: list[Sample], preds: dict[str, dict], out: Path
                      ) -> tuple[dict, list[tuple[str, str, float]]]:
    """Metrics of one model's predictions, and its per-sample headline scores (id, domain,
    0-100). Samples the model did not answer (an endpoint error) are left out and counted as
    `unanswered`. Rule rows go to scored.jsonl; `empty` is the share of predictions with no
    observation left once parsed (a zero score, not a failure)."""
    answered = [s for s in samples if not preds[s.id].get("error")]
    if not answered:
        raise RuntimeError(f"eval: none of the {len(samples)} samples was answered; last error: "
                           f"{preds[samples[-1].id]['error'][:500]}")
    if len(answered) < len(samples):
        log.warning("eval: %d of %d samples unanswered (left out of the score, asked again on the "
                    "next run)", len(samples) - len(answered), len(samples))
    unanswered, samples, rows = len(samples) - len(answered), answered, []
    for s in samples:
        raw = preds[s.id]["prediction"]
        obs = extract_observation(raw)[0]
        rows.append({"id": s.id, "task": s.domain, "turn_idx": s.turn_idx,
                     **rule_row(get_domain(s.domain), obs, raw, s.reference, s.history),
                     "empty": float(not obs.strip())})
    with open(out / "scored.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    metrics = {"mode": ev.mode, **aggregate_rule(rows), "unanswered": unanswered}
    for d, entry in metrics["domains"].items():
        entry["empty"] = mean(r["empty"] for r in rows if r["task"] == d)
    metrics["empty"] = mean(r["empty"] for r in rows)
    per_sample = [(r["id"], r["task"], 100 * r["score"]) for r in rows]
    if ev.mode != "rule":
        items = [judge_item(s, preds[s.id]["prediction"]) for s in samples]
        if ev.mode == "reference":
            if not ev.judge.baseline:
                raise ValueError("eval.mode=reference needs eval.judge.baseline (a predictions.jsonl)")
            base = {k: v for k, v in read_done(Path(ev.judge.baseline)).items() if not v.get("error")}
            missing = [it["id"] for it in items if it["id"] not in base]
            if missing:
                raise ValueError(f"eval.judge.baseline lacks sample '{missing[0]}' ({len(missing)} in all)")
            for it in items:
                it["baseline"] = extract_observation(base[it["id"]]["prediction"])[0]
        kind = "rubric" if ev.mode == "judge" else ev.mode
        judged = judge_all(ev.judge, kind, items, out / "judged.jsonl")
        failed = sum(r["failed"] != 0.0 for r in judged)
        if failed:
            log.warning("eval: %d of %d judgements failed (left out of the score, asked again on the "
                        "next run); first: %s", failed, len(judged),
                        next(r for r in judged if r["failed"] != 0.0).get("error_message", "?")[:300])
        if ev.mode == "judge":
            metrics["judge"] = aggregate_judged(judged)
            per_sample = [(str(r["id"]), str(r["task"]).split("/")[-1], (r["total_score"] - 1) / 4 * 100)
                          for r in judged if r["failed"] == 0.0]
        else:
            key = "fooled" if ev.mode == "turing" else "win"
            metrics[ev.mode] = aggregate_ab(judged, key)
            per_sample = [(str(r["id"]), str(r["task"]).split("/")[-1], 100 * r[key])
                          for r in judged if r["failed"] == 0.0]
    write_metrics(out / "metrics.json", metrics)
    return metrics, per_sample


def controllability(cfg, ckpt: Path | None, samples: list[Sample], out: Path, stage: str | None = None) -> dict:
    """Ask the first eval.controllability_samples samples of each domain again with each
    perturbation (inject an error, paginate, withhold a result) as a simulation instruction,
    and report per domain and perturbation the share of observations that obey it."""
    per_domain: dict[str, list[Sample]] = {}
    for s in samples:
        if len(per_domain.setdefault(s.domain, [])) < cfg.eval.controllability_samples:
            per_domain[s.domain].append(s)
    asked = [replace(s, id=f"{s.id}#{kind}", messages=with_instruction(s.messages, text))
             for group in per_domain.values() for s in group for kind, text in PERTURBATIONS.items()]
    if not asked:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    preds = (predict_endpoint(cfg.eval.endpoint, asked, out) if ckpt is None
             else predict_local(cfg, ckpt, asked, out, stage)[0])
    rates: dict[str, dict[str, list[bool]]] = {}
    for s in asked:
        if preds[s.id].get("error"):
            continue  # unanswered: no evidence either way (asked again on the next run)
        kind = s.id.rsplit("#", 1)[1]
        obs = extract_observation(preds[s.id]["prediction"])[0]
        rates.setdefault(s.domain, {}).setdefault(kind, []).append(
            follows_instruction(kind, obs, get_domain(s.domain)))
    return {d: {k: sum(v) / len(v) for k, v in kinds.items()} | {"samples": len(per_domain[d])}
            for d, kinds in rates.items()}


def _models(cfg, paths: RunPaths) -> dict[str, Path | None]:
    if cfg.eval.endpoint.base_url:
        return {cfg.eval.endpoint.model or "endpoint": None}
    if cfg.eval.checkpoint:
        ckpt = Path(cfg.eval.checkpoint)
        return {label(ckpt, {s: paths.model(s) for s in STAGE_MODELS}): ckpt}
    trained = {s: paths.model(s) for s in STAGE_MODELS if (paths.model(s) / "config.json").exists()}
    if not trained:
        raise FileNotFoundError(f"eval: no trained model under {paths.root}; set eval.checkpoint "
                                "or eval.endpoint.base_url")
    return trained if cfg.eval.compare_stages else dict([list(trained.items())[-1]])


def _left_out(results: dict[str, dict]) -> str:
    parts = []
    for name, m in results.items():
        failed = m.get(m["mode"], {}).get("failed", 0) if m["mode"] != "rule" else 0
        for count, what in ((m.get("unanswered", 0), "samples unanswered"), (failed, "judgements failed")):
            if count:
                parts.append(f"{name}: {count} {what}")
    return "; ".join(parts)


def check_preset(ev) -> None:
    """The agentworldbench preset judges with the benchmark's own prompts and asks a judge; it
    refuses to start without them rather than score with other prompts under its name."""
    if ev.preset != "agentworldbench":
        return
    missing = [k for k, v in (("eval.judge.prompts", ev.judge.prompts), ("eval.judge.base_url",
               ev.judge.base_url)) if not v]
    if missing:
        raise ValueError(f"eval=agentworldbench needs {' and '.join(missing)}: the prompts/ folder of "
                         "a local copy of the AgentWorldBench repository (its per-domain judge prompts "
                         "and judge template) and the judge's OpenAI-compatible endpoint")
    if not Prompts(ev.judge.prompts).bench_user:
        raise ValueError(f"eval.judge.prompts={ev.judge.prompts}: no eval/lwm_eval_utils/task_configs.py "
                         "beside it, so the benchmark's judge template is not there; point it at the "
                         "prompts/ folder of a full copy of the AgentWorldBench repository")


def check_domains(samples: list[Sample], paths: RunPaths) -> None:
    """Every domain of the eval set is registered, before a minute of generation is spent: a
    user domain needs the same declaration here as where its data was prepared."""
    unknown = sorted({s.domain for s in samples} - set(domain_names()))
    if not unknown:
        return
    recorded = {}  # how the run's stages declared them, for the exact override
    for record in sorted(paths.root.glob("*/config.yaml")):
        try:
            recorded.update(OmegaConf.load(record).data.extra_domains)
        except Exception:  # noqa: BLE001 - an unreadable record: the placeholder is shown
            continue
    declare = ", ".join(f"{d}: {recorded.get(d, 'package.module:ClassName')}" for d in unknown)
    raise ValueError(f"eval: the eval set holds samples of {', '.join(unknown)}, which this run does "
                     f"not register (registered: {', '.join(domain_names())}); declare "
                     f"{'it' if len(unknown) == 1 else 'them'} as for its training: "
                     f"data.extra_domains={{{declare}}} (or the data preset that declares "
                     f"{'it' if len(unknown) == 1 else 'them'})")


def evaluate(cfg: DictConfig, paths: RunPaths) -> dict:
    ev = cfg.eval
    check_preset(ev)
    if ev.mode not in MODES:
        raise ValueError(f"eval.mode: unknown mode '{ev.mode}' ({', '.join(MODES)})")
    prompt_format(ev, None)  # a wrong eval.prompt_format fails before any model is loaded
    out = paths.stage("eval")
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)  # what this eval ran with (eval.report labels)
    source = Path(ev.input) if ev.input else paths.prepared / "eval"
    samples = [view(r) for r in load_eval_set(source, ev.max_samples)]
    register_extra(cfg.data.extra_domains)  # as every process does (the CLI did already)
    check_domains(samples, paths)
    tracker = Tracker(cfg, "eval", out)
    results, per_sample = {}, {}
    for name, ckpt in _models(cfg, paths).items():
        stage = name if name in STAGE_MODELS else None
        identity = endpoint_identity(ev.endpoint) if ckpt is None else local_identity(cfg, ckpt)
        model_out = model_dir(out, name, identity)
        if ckpt is None:
            preds, asked = predict_endpoint(ev.endpoint, samples, model_out), {"format": "chat (endpoint)"}
        else:
            preds, asked = predict_local(cfg, ckpt, samples, model_out, stage)
        results[name], per_sample[name] = score_predictions(ev, samples, preds, model_out)
        results[name]["asked"] = asked
        results[name]["ci"] = intervals(per_sample[name], ev.bootstrap, cfg.seed)
        results[name]["controllability"] = controllability(cfg, ckpt, samples, model_out / "controllability",
                                                           stage)
        results[name]["checkpoint"] = str(ckpt) if ckpt else ev.endpoint.base_url
        results[name]["identity"], results[name]["model"] = digest(identity), identity
    steps = gains(per_sample, ev.bootstrap, cfg.seed) if len(per_sample) > 1 else {}
    title = f"{HEADLINE[ev.mode]} on {source} ({len(samples)} samples)"
    report = table(results)
    ci_note = (f"Cells: mean [95% bootstrap interval, {ev.bootstrap} resamples within each domain, "
               f"seed {cfg.seed}]." if ev.bootstrap > 0 else "")
    body = [f"# Eval\n\n{title}\n\n{report}\n\n{ci_note}\n\n{asked_note(results)}\n"]
    if steps:
        body.append("## Stage gains: paired per-sample differences (x100)\n\n"
                    f"{gains_table(steps)}\n\nEach row is a model minus the one before it, on the same "
                    "samples; an interval above 0 orders the two.\n")
    if left_out := _left_out(results):
        body.append(f"Left out of the scores (asked again on the next run): {left_out}.\n")
    body.append(f"## Rule metrics, all answered samples (x100)\n\n{rule_detail(results)}\n")
    body.append(f"Empty predictions (nothing left once parsed: scored 0), share x100: "
                + ", ".join(f"{n} {100 * m['empty']:.1f}" for n, m in results.items() if "empty" in m) + "\n")
    if rl := rl_note(paths):
        body.append(rl)
    if control := controllability_table(results):
        body.append("## Controllability: observations obeying a simulation instruction (x100)\n\n"
                    f"{control}\n")
    if ev.plots:
        files = plots(results, per_sample, out)
        body.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in files) + "\n")
    (out / "report.md").write_text("\n".join(body))
    print(f"\n{title}:\n{report}\n{ci_note}\n{asked_note(results)}\n"
          + (f"\nStage gains (paired, x100):\n{gains_table(steps)}\n" if steps else "")
          + (f"Left out: {left_out}\n" if left_out else ""))
    for name, m in results.items():
        tracker.log({f"{name}/micro": m["micro"], f"{name}/macro": m["macro"]})
    eval_set = digest([[s.id, s.messages, s.reference] for s in samples])
    return tracker.finish({"source": str(source), "eval_set": eval_set, "mode": ev.mode, "results": results,
                           "gains": steps})


def asked_note(results: dict[str, dict]) -> str:
    """How each model was asked: the prompt format and the longest prompt."""
    parts = []
    for name, m in results.items():
        a = m.get("asked", {})
        if "limit" in a:
            parts.append(f"{name}: {a['format']}, prompts cut to {a['limit']} tokens "
                         f"({a['prompts_cut']} of {a['samples']} cut)")
        elif a:
            parts.append(f"{name}: {a['format']}")
    return ("Prompts (document: the CPT document up to the observation, scored as the model's own "
            "continuation; chat: the chat template): " + "; ".join(parts) + ".") if parts else ""


def rl_note(paths: RunPaths) -> str:
    """RL's learning signal, from rl/metrics.json when this run trained RL: per logged step, the
    reward, its spread within groups (the share of groups whose completions all scored alike
    gets no gradient), the KL to the start and the relative weight change."""
    try:
        m = json.loads((paths.root / "rl" / "metrics.json").read_text())
    except (OSError, ValueError):
        return ""
    cols = ("reward", "reward_std", "frac_reward_zero_std", "kl", "policy_change")
    lines = ["| step | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for st in m.get("per_step", []):
        lines.append(f"| {st['step']} | " + " | ".join("-" if st.get(k) is None else f"{st[k]:.4g}" for k in cols)
                     + " |")
    held, kept = m.get("held_out"), m.get("kept", "rl")
    check = ""
    if held:
        check = (f"\nHeld-out RL prompts ({held['init']['prompts']}, greedy, the stage's reward): "
                 f"{held['init']['macro']:.4f} before RL, {held['final']['macro']:.4f} after; rl's model is "
                 + ("RL's final weights.\n" if kept == "rl" else
                    "its starting weights (rl.keep_best: RL did not score higher there).\n"))
    return ("## RL: learning signal per logged step\n\n" + "\n".join(lines) + "\n\n"
            "frac_reward_zero_std: share of prompt groups whose completions all earned the same reward "
            "(no gradient from them); policy_change: the step's weight update norm over the weight norm.\n"
            + check)
