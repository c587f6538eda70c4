"""Predictions of the model under test: a local checkpoint (batched generate) or an
OpenAI-compatible endpoint (concurrent requests with retries). Both append to predictions.jsonl
(in the model's own folder: eval/models.py) as results arrive, so a killed eval continues where
it stopped. Each row records the digest of the prompt it answers; a row whose prompt changed is
asked again."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from lwm.endpoints.client import ChatClient, EndpointError, run_concurrent
from lwm.endpoints.generate import generate
from lwm.endpoints.sample import Sample
from lwm.identity import digest
from lwm.tracking import complete_rows


def read_done(path: Path) -> dict[str, dict]:
    """Rows already written; a line cut by a kill and everything after it are dropped."""
    return complete_rows(path, "id")


def _row(s: Sample, text: str, **extra) -> dict:
    return {"id": s.id, "task": s.domain, "turn_idx": s.turn_idx, "prediction": text,
            "input": digest(s.messages), **extra}


def reusable(path: Path, samples: list[Sample]) -> dict[str, dict]:
    """The rows of path that answer these samples' prompts as they are now, without an error."""
    asked = {s.id: digest(s.messages) for s in samples}
    return {k: v for k, v in read_done(path).items()
            if not v.get("error") and k in asked and v.get("input") == asked[k]}


def predict_local(cfg, checkpoint: Path, samples: list[Sample], out: Path) -> dict[str, dict]:
    from lwm.models.hf import load_model
    from lwm.tokenizer import fit_prompt, load_tokenizer
    path = out / "predictions.jsonl"
    done = reusable(path, samples)
    todo = [s for s in samples if s.id not in done]
    if todo:
        tok = load_tokenizer(checkpoint)
        model = load_model(checkpoint, cfg.model, cfg.backend.dtype).eval()
        if torch.cuda.is_available():
            model = model.cuda()
        todo.sort(key=lambda s: len(json.dumps(s.messages)))  # similar lengths batch together
        bar = tqdm(total=len(todo), desc=f"eval {out.name}", unit="sample")
        with open(path, "a", encoding="utf-8") as f:
            for i in range(0, len(todo), cfg.eval.batch_size):
                batch = todo[i:i + cfg.eval.batch_size]
                # Long prompts lose their oldest history turns so prompt + answer fit the model.
                limit = model.config.max_position_embeddings - cfg.eval.max_new_tokens
                prompts = [fit_prompt(tok, s.messages, limit)[0] for s in batch]
                texts = generate(model, tok, prompts, cfg.eval.max_new_tokens, cfg.eval.temperature)
                for s, text in zip(batch, texts):
                    done[s.id] = _row(s, text)
                    f.write(json.dumps(done[s.id], ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(batch))
        bar.close()
    return done


def predict_endpoint(ecfg, samples: list[Sample], out: Path) -> dict[str, dict]:
    """A failed request is recorded with an empty prediction and `error`, and retried on resume."""
    path = out / "predictions.jsonl"
    done = reusable(path, samples)
    todo = [s for s in samples if s.id not in done]
    if todo:
        client = ChatClient(ecfg)
        bar = tqdm(total=len(todo), desc=f"eval {out.name} (endpoint)", unit="sample")

        def ask(s: Sample) -> dict:
            try:
                return _row(s, client.complete(s.messages))
            except EndpointError as e:
                return _row(s, "", error=str(e))

        with open(path, "a", encoding="utf-8") as f:
            def write(s, row):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                done[s.id] = row
                bar.update(1)
            run_concurrent(ask, todo, ecfg.concurrency, write)
        bar.close()
    return done
