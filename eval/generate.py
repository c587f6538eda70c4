"""Predictions of the model under test: a local checkpoint (batched generate) or an
OpenAI-compatible endpoint (concurrent requests with retries). Both append to predictions.jsonl
(in the model's own folder: eval/models.py) as results arrive, so a killed eval continues where
it stopped. Each row records the digest of the prompt it answers; a row whose prompt changed is
asked again.

A local model is asked in one of two formats (eval.prompt_format): `chat`, the sample's messages
through the chat template, as SFT and RL train; or `document`, the CPT document up to where the
observation starts (lwm.render.document_prompt), as CPT trains. A document continuation is cut
at the next turn's header; one that ends there (or at the end-of-text token) is scored as a
tagged reply, as the document closes an observation where a chat reply closes its tag. Prompts
are cut to the length the model trained at (`prompt_limit`), never longer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from lwm.domains import get_domain
from lwm.endpoints.client import ChatClient, EndpointError, run_concurrent
from lwm.endpoints.generate import generate_ids
from lwm.endpoints.sample import Sample
from lwm.identity import digest
from lwm.render import document_observation, document_prompt, target
from lwm.tracking import complete_rows

FORMATS = ("auto", "chat", "document")
DOCUMENT_STAGES = ("init", "cpt")  # models that have seen CPT documents only


def read_done(path: Path) -> dict[str, dict]:
    """Rows already written; a line cut by a kill and everything after it are dropped."""
    return complete_rows(path, "id")


def _row(s: Sample, text: str, **extra) -> dict:
    return {"id": s.id, "task": s.domain, "turn_idx": s.turn_idx, "prediction": text,
            "input": digest(s.messages), **extra}


def reusable(path: Path, samples: list[Sample], how=None) -> dict[str, dict]:
    """The rows of path that answer these samples' prompts as they are now (asked the same way:
    `how`, the prompt format and length), without an error."""
    asked = {s.id: digest(s.messages if how is None else [how, s.messages]) for s in samples}
    return {k: v for k, v in read_done(path).items()
            if not v.get("error") and k in asked and v.get("input") == asked[k]}


def prompt_format(ev, stage: str | None) -> str:
    """The format a model is asked in: eval.prompt_format, where `auto` asks the models that
    have seen only CPT documents (this run's init and cpt) in the document format."""
    if ev.prompt_format not in FORMATS:
        raise ValueError(f"eval.prompt_format: '{ev.prompt_format}' is not one of {', '.join(FORMATS)}")
    if ev.prompt_format != "auto":
        return ev.prompt_format
    return "document" if stage in DOCUMENT_STAGES else "chat"


def prompt_limit(cfg, fmt: str, stage: str | None, positions: int) -> int:
    """The longest prompt, in tokens: eval.max_prompt_tokens, or (0) the length this run's stage
    model trained at (data.seq_len for documents, sft.max_length for chat) less the answer's
    tokens; a model from elsewhere gets its position range."""
    ev = cfg.eval
    if ev.max_prompt_tokens:
        trained = ev.max_prompt_tokens + ev.max_new_tokens
    elif stage is None:
        trained = positions
    else:
        trained = cfg.data.seq_len if fmt == "document" else cfg.sft.max_length
    limit = min(trained, positions) - ev.max_new_tokens
    if limit < 1:
        raise ValueError(f"eval: no room for a prompt: {min(trained, positions)} tokens trained, "
                         f"eval.max_new_tokens={ev.max_new_tokens}")
    return limit


def encode_sample(tok, s: Sample, fmt: str, limit: int) -> list[int]:
    """A sample's prompt ids within `limit`. Chat prompts lose their oldest history turns first
    (as SFT fits its samples), then text from the left; a document keeps its latest `limit`
    tokens, a window as CPT's packed sequences are."""
    from lwm.tokenizer import fit_prompt
    if fmt == "chat":
        return fit_prompt(tok, s.messages, limit)[0]
    return tok.encode(document_prompt(get_domain(s.domain), s.messages), add_special_tokens=False)[-limit:]


def reply(tok, ids: list[int], fmt: str) -> tuple[str, dict]:
    """The reply a continuation is scored as, and what the row records beside it."""
    text = tok.decode(ids, skip_special_tokens=True)
    if fmt == "chat":
        return text, {}
    observation, ended = document_observation(text)
    ended = ended or tok.eos_token_id in ids
    return (target(observation) if ended else observation), {"continuation": text, "ended": ended}


def predict_local(cfg, checkpoint: Path, samples: list[Sample], out: Path, stage: str | None = None
                  ) -> tuple[dict[str, dict], dict]:
    """Predictions of a local checkpoint, and how it was asked (format, prompt limit, how many
    prompts were cut to it). `stage`: which of this run's stage models it is, if any."""
    from lwm.models.hf import load_model
    from lwm.tokenizer import load_tokenizer
    path = out / "predictions.jsonl"
    fmt = prompt_format(cfg.eval, stage)
    tok = load_tokenizer(checkpoint)
    positions = json.loads((checkpoint / "config.json").read_text()).get("max_position_embeddings", 1 << 30)
    limit = prompt_limit(cfg, fmt, stage, positions)
    how = {"format": fmt, "limit": limit}
    done = reusable(path, samples, how)
    cut = sum(len(encode_sample(tok, s, fmt, 1 << 30)) > limit for s in samples)
    todo = [s for s in samples if s.id not in done]
    if todo:
        model = load_model(checkpoint, cfg.model, cfg.backend.dtype).eval()
        if torch.cuda.is_available():
            model = model.cuda()
        todo.sort(key=lambda s: len(json.dumps(s.messages)))  # similar lengths batch together
        bar = tqdm(total=len(todo), desc=f"eval {out.name} ({fmt})", unit="sample")
        with open(path, "a", encoding="utf-8") as f:
            for i in range(0, len(todo), cfg.eval.batch_size):
                batch = todo[i:i + cfg.eval.batch_size]
                prompts = [encode_sample(tok, s, fmt, limit) for s in batch]
                outs = generate_ids(model, tok, prompts, cfg.eval.max_new_tokens, cfg.eval.temperature)
                for s, ids in zip(batch, outs):
                    text, extra = reply(tok, ids, fmt)
                    done[s.id] = _row(s, text, **extra)
                    done[s.id]["input"] = digest([how, s.messages])
                    f.write(json.dumps(done[s.id], ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(batch))
        bar.close()
    return done, {**how, "prompts_cut": cut, "samples": len(samples)}


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
