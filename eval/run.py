"""`lwm eval`: generate on AgentWorldBench-format sets, score with the rule verifiers.

Reads per-domain `*_test.jsonl` files (the public benchmark's or our held-out sets), generates
each sample's next observation with a local checkpoint (batched, greedy by default), scores it
with the domain's rule verifier, and prints a per-domain table. Predictions are appended as they
are made, so a killed eval resumes where it stopped. `lwm run` scores every stage's model on the
same set and ends with one comparison table.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from lwm.domains import extract_observation, get_domain
from lwm.modeling import load_model
from lwm.tokenizer import encode_prompt, load_tokenizer
from lwm.tracking import RunPaths, Tracker, write_metrics

log = logging.getLogger("lwm.eval")
STAGE_MODELS = ("init", "cpt", "sft", "rl")
_FIELDS = ("task", "id", "prompt", "response")


def load_eval_set(source: Path, max_samples: int) -> list[dict]:
    """AgentWorldBench JSONL records from a file or every *_test.jsonl in a folder;
    at most max_samples per domain (0 = all), in file order."""
    files = sorted(source.glob("*_test.jsonl")) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"eval: no *_test.jsonl files in {source}")
    records, per_domain = [], defaultdict(int)
    for path in files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                missing = [k for k in _FIELDS if k not in rec]
                if missing:
                    raise ValueError(f"{path}:{lineno}: field '{missing[0]}' missing "
                                     "(AgentWorldBench layout expected)")
                if max_samples and per_domain[rec["task"]] >= max_samples:
                    continue
                per_domain[rec["task"]] += 1
                records.append(rec)
    return records


def prompt_messages(rec: dict) -> list[dict]:
    messages = list(rec["prompt"])
    if rec.get("system_str") and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": rec["system_str"]}] + messages
    return messages


def reference_observation(rec: dict) -> str:
    response = rec["response"]
    text = response[-1]["content"] if isinstance(response[-1], dict) else response[-1]
    return extract_observation(text)[0]


@torch.no_grad()
def generate(model, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float) -> list[str]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature or None, top_p=None,
                         top_k=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, width:], skip_special_tokens=True)


def score_checkpoint(cfg: DictConfig, checkpoint: Path, records: list[dict], out: Path) -> dict:
    """Predict and score every record with one checkpoint; resumes from predictions.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    done = {}
    if pred_path.exists():
        for line in pred_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["id"]] = rec
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything from here is redone
        pred_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()))
    todo = [r for r in records if r["id"] not in done]
    if todo:
        tok = load_tokenizer(checkpoint)
        model = load_model(checkpoint, cfg.model, cfg.backend.dtype).eval()
        todo.sort(key=lambda r: len(json.dumps(r["prompt"])))  # similar lengths batch together
        bar = tqdm(total=len(todo), desc=f"eval {out.name}", unit="sample")
        with open(pred_path, "a", encoding="utf-8") as f:
            for i in range(0, len(todo), cfg.eval.batch_size):
                batch = todo[i:i + cfg.eval.batch_size]
                prompts = [encode_prompt(tok, prompt_messages(r)) for r in batch]
                texts = generate(model, tok, prompts, cfg.eval.max_new_tokens, cfg.eval.temperature)
                for rec, text in zip(batch, texts):
                    verdict = get_domain(rec["task"]).verify(text, reference_observation(rec))
                    row = {"id": rec["id"], "task": rec["task"], "prediction": text,
                           **verdict.as_dict()}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    done[rec["id"]] = row
                f.flush()
                bar.update(len(batch))
        bar.close()
    rows = [done[r["id"]] for r in records]
    per_domain = defaultdict(list)
    for row in rows:
        per_domain[row["task"]].append(row)
    metrics = {"checkpoint": str(checkpoint), "samples": len(rows), "domains": {
        d: {k: float(np.mean([r[k] for r in rs])) for k in ("score", "format", "content", "exact")}
        | {"samples": len(rs)} for d, rs in sorted(per_domain.items())}}
    metrics["micro"] = float(np.mean([r["score"] for r in rows])) if rows else 0.0
    metrics["macro"] = float(np.mean([m["score"] for m in metrics["domains"].values()])) if rows else 0.0
    write_metrics(out / "metrics.json", metrics)
    return metrics


def table(results: dict[str, dict]) -> str:
    """Markdown table: one row per model, a column per domain (rule score x 100), micro, macro."""
    domains = sorted({d for m in results.values() for d in m["domains"]})
    head = "| model | " + " | ".join(domains) + " | micro | macro |"
    lines = [head, "|" + "---|" * (len(domains) + 3)]
    for name, m in results.items():
        cells = [f"{100 * m['domains'][d]['score']:.1f}" if d in m["domains"] else "-" for d in domains]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * m['micro']:.1f} | {100 * m['macro']:.1f} |")
    return "\n".join(lines)


def evaluate(cfg: DictConfig, paths: RunPaths) -> dict:
    out = paths.stage("eval")
    source = Path(cfg.eval.input) if cfg.eval.input else paths.prepared / "eval"
    records = load_eval_set(source, cfg.eval.max_samples)
    tracker = Tracker(cfg, "eval", out)
    if cfg.eval.checkpoint:
        models = {Path(cfg.eval.checkpoint).name: Path(cfg.eval.checkpoint)}
    else:
        trained = {s: paths.model(s) for s in STAGE_MODELS if (paths.model(s) / "config.json").exists()}
        if not trained:
            raise FileNotFoundError(f"eval: no trained model under {paths.root}; set eval.checkpoint")
        models = trained if cfg.eval.compare_stages else dict([list(trained.items())[-1]])
    results = {name: score_checkpoint(cfg, ckpt, records, out / name) for name, ckpt in models.items()}
    report = table(results)
    (out / "report.md").write_text(f"Rule-verifier scores (x100) on {source}\n\n{report}\n")
    print(f"\nRule-verifier scores (x100), {len(records)} samples from {source}:\n{report}\n")
    for name, m in results.items():
        tracker.log({f"{name}/micro": m["micro"], f"{name}/macro": m["macro"]})
    return tracker.finish({"source": str(source), "results": results})
