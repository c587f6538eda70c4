"""Reasoning targets for SFT: rejection sampling from a teacher.

For each SFT query the teacher (an OpenAI-compatible endpoint, or a local checkpoint) writes k
candidate replies, each reasoning about what the action does and then predicting the
observation, without seeing the real one. A candidate is scored against the real observation by
the domain's rule verifier and, when a judge is configured, by the rubric judge; the best one
whose score reaches the threshold lends its reasoning to the target. The target's observation is
always the real one: the candidate's prediction only shows whether its reasoning leads there.

Teacher replies and their scores are appended to <run>/sft/teacher/candidates.jsonl one query
at a time, keyed by the query and the teacher's identity (a local checkpoint's content
fingerprint; an endpoint's URL, the model it reports and the sampling settings), so a killed run
asks again only what it lacks and another teacher is asked afresh; the selection (threshold) is
redone on every run from the cache. A candidate whose judgement failed (rubric null) is judged
again on the next run; its reply is kept. Under torchrun only rank 0 asks and writes; the other
ranks receive its targets (`on_rank0`), so every rank trains on the same dataset.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from lwm.domains import OBS_OPEN, extract_observation, get_domain
from lwm.endpoints.client import ChatClient, EndpointError, endpoint_identity, run_concurrent
from lwm.identity import checkpoint_fingerprint, digest
from lwm.endpoints.judge import Judge, judge_directed, rubric_item
from lwm.tracking import complete_rows

log = logging.getLogger("lwm.sft")

INSTRUCTION = (
    "Before answering, reason step by step inside <think> and </think> about what the action "
    "does to the environment given everything shown so far: which parts of the result follow "
    "from earlier turns and which are new. Then write the observation between "
    "<predicted_observation> and </predicted_observation>.")
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
# How long the other ranks wait for rank 0's teacher run: hours with a hosted teacher. Waiting
# that long is safe: if rank 0 fails, torchrun stops the whole job.
RANK0_WAIT = timedelta(days=2)


def reasoning_of(text: str) -> str:
    """The reasoning of a reply: its <think> block, or whatever precedes the observation tag."""
    m = _THINK.search(text)
    if m:
        return m.group(1).strip()
    return text.split(OBS_OPEN)[0].strip() if OBS_OPEN in text else ""


def teacher_messages(prompt: list[dict]) -> list[dict]:
    messages = [dict(m) for m in prompt]
    messages[0]["content"] = messages[0]["content"].rstrip() + "\n\n" + INSTRUCTION
    return messages


class EndpointTeacher:
    def __init__(self, tcfg):
        self.cfg, self.client = tcfg, ChatClient(tcfg)
        self.name = f"{tcfg.base_url}|{tcfg.model}"
        # cached replies are keyed by the model behind the URL, not by the URL and name alone
        self.identity = endpoint_identity(tcfg, temperature=tcfg.temperature, max_tokens=tcfg.max_tokens)

    def sample(self, messages: list[dict], k: int, seed: int) -> list[str]:
        # A distinct seed per candidate, so servers that honour seeds still return k different ones.
        return [self.client.complete(messages, temperature=self.cfg.temperature,
                                     max_tokens=self.cfg.max_tokens, seed=seed + i) for i in range(k)]


class LocalTeacher:
    """A local checkpoint sampled with transformers (one query at a time, k sequences)."""

    def __init__(self, tcfg, model_cfg, dtype: str):
        from lwm.models.hf import load_model
        from lwm.tokenizer import load_tokenizer
        self.cfg, self.name = tcfg, f"local|{tcfg.path}"
        self.identity = {"checkpoint": checkpoint_fingerprint(tcfg.path), "temperature": tcfg.temperature,
                         "max_tokens": tcfg.max_tokens, "dtype": dtype}
        self.tok = load_tokenizer(tcfg.path)
        self.model = load_model(tcfg.path, model_cfg, dtype).eval()

    def sample(self, messages: list[dict], k: int, seed: int) -> list[str]:
        import torch
        from lwm.tokenizer import encode_prompt
        torch.manual_seed(seed)
        ids = torch.tensor([encode_prompt(self.tok, messages)], device=self.model.device)
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_tokens,
                                      num_return_sequences=k, pad_token_id=self.tok.pad_token_id)
        return self.tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def _key(prompt: list[dict], teacher: dict, k: int) -> str:
    return digest([prompt, teacher, k])[:20]


def _read_cache(path: Path) -> dict[str, dict]:
    return complete_rows(path, "key")  # a line cut by a kill: asked again


def score_candidates(texts: list[str], row: dict, reference: str, judge: Judge | None,
                     rubric_weight: float) -> list[dict]:
    """Rule (and rubric) score of each candidate against the real observation. A candidate
    without reasoning, or whose observation addresses a grader, scores 0."""
    domain = get_domain(row["domain"])
    obs = [extract_observation(t)[0] for t in texts]
    rubric = [None] * len(texts)
    if judge is not None:
        items = [rubric_item(row["prompt"], reference, row["domain"], o, f"{row['id']}#{i}")
                 for i, o in enumerate(obs)]
        rubric = [total for total, _ in judge.score_all(items)]
    out = []
    for text, o, rub in zip(texts, obs, rubric):
        rule = domain.verify(text, reference).score
        usable = bool(reasoning_of(text)) and not judge_directed(o, reference)
        score = rule if judge is None else rubric_weight * (rub or 0.0) + (1 - rubric_weight) * rule
        out.append({"text": text, "rule": rule, "rubric": rub, "score": score if usable else 0.0})
    return out


def rejudge(cache: dict[str, dict], queries: list[dict], keys: list[str], judge: Judge,
            rubric_weight: float, cache_path: Path) -> int:
    """Score again the cached candidates of these queries whose judgement failed; the cache file
    is rewritten with the new scores. Returns how many candidates were judged again."""
    stale = [(row, cache[k]) for row, k in zip(queries, keys)
             if k in cache and any(c["rubric"] is None for c in cache[k]["candidates"])]
    count = 0
    for row, rec in stale:
        reference = extract_observation(row["completion"][-1]["content"])[0]
        again = [i for i, c in enumerate(rec["candidates"]) if c["rubric"] is None]
        scored = score_candidates([rec["candidates"][i]["text"] for i in again], row, reference,
                                  judge, rubric_weight)
        for i, c in zip(again, scored):
            rec["candidates"][i] = c
        count += len(again)
    if stale:
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in cache.values()),
                       encoding="utf-8")
        tmp.replace(cache_path)
    return count


def reasoning_targets(tcfg, rows: list[dict], cache_dir: Path, seed: int, model_cfg=None,
                      dtype: str = "float32") -> tuple[dict[str, str], dict]:
    """{"<id>#<copy>": reasoning} for the SFT rows whose best candidate passed, and the stats
    (acceptance rate per domain, candidates asked, teacher failures)."""
    teacher = EndpointTeacher(tcfg) if tcfg.base_url else LocalTeacher(tcfg, model_cfg, dtype)
    judge = Judge(tcfg.judge) if tcfg.judge.base_url else None
    queries = rows[:tcfg.max_queries] if tcfg.max_queries else rows
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_path = cache_dir / "candidates.jsonl"
    cache = _read_cache(cache_path)
    keys = [_key(r["prompt"], teacher.identity, tcfg.samples) for r in queries]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    failed = 0
    rejudged = rejudge(cache, queries, keys, judge, tcfg.rubric_weight, cache_path) if judge else 0

    def ask(i: int) -> dict | None:
        row = queries[i]
        reference = extract_observation(row["completion"][-1]["content"])[0]
        try:
            texts = teacher.sample(teacher_messages(row["prompt"]), tcfg.samples, seed)
        except EndpointError as e:  # not cached: the next run asks again
            log.warning("teacher: %s: %s", row["id"], e)
            return None
        return {"key": keys[i], "id": row["id"], "domain": row["domain"],
                "candidates": score_candidates(texts, row, reference, judge, tcfg.rubric_weight)}

    with open(cache_path, "a", encoding="utf-8") as f:
        def write(i, rec):
            nonlocal failed
            if rec is None:
                failed += 1
                return
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            cache[rec["key"]] = rec
        # A local model generates in this thread; endpoints take requests concurrently.
        run_concurrent(ask, todo, tcfg.concurrency if tcfg.base_url else 1, write)

    targets, per_domain = {}, defaultdict(lambda: {"queries": 0, "accepted": 0})
    with open(cache_dir / "targets.jsonl", "w", encoding="utf-8") as f:
        for row, key in zip(queries, keys):
            entry = per_domain[row["domain"]]
            entry["queries"] += 1
            rec = cache.get(key)
            if rec is None:
                continue
            best = max(rec["candidates"], key=lambda c: c["score"], default=None)
            if best is None or best["score"] < tcfg.threshold:
                continue
            entry["accepted"] += 1
            reasoning = reasoning_of(best["text"])
            targets[f"{row['id']}#{row['copy']}"] = reasoning
            f.write(json.dumps({"id": row["id"], "copy": row["copy"], "domain": row["domain"],
                                "score": best["score"], "reasoning": reasoning}, ensure_ascii=False) + "\n")
    for entry in per_domain.values():
        entry["acceptance_rate"] = entry["accepted"] / entry["queries"] if entry["queries"] else 0.0
    n = sum(e["queries"] for e in per_domain.values())
    judge_failed = sum(c["rubric"] is None for k in keys if k in cache for c in cache[k]["candidates"]) \
        if judge else 0
    stats = {"teacher": teacher.name, "queries": n, "asked": len(todo), "cached": len(queries) - len(todo),
             "teacher_failed": failed, "rejudged": rejudged, "judge_failed": judge_failed,
             "accepted": len(targets),
             "acceptance_rate": len(targets) / n if n else 0.0, "domains": dict(per_domain)}
    return targets, stats


def on_rank0(compute):
    """compute() on rank 0 only, its result on every rank. Under torchrun the other ranks wait in
    a broadcast on a gloo group of its own, whose timeout outlasts a long teacher run (the default
    group's would not) and which needs no GPU for the Python objects it carries."""
    import torch.distributed as dist
    from lwm.train import dist as pdist
    rank, world = pdist.init()  # joins the job's group, if any; creates none for one process
    if world == 1:
        return compute()
    group = dist.new_group(backend="gloo", timeout=RANK0_WAIT)
    result = [compute() if rank == 0 else None]
    dist.broadcast_object_list(result, src=0, group=group)
    dist.destroy_process_group(group)
    return result[0]
