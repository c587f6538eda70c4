"""LLM-as-judge over an OpenAI-compatible endpoint: the five-dimension rubric, the Turing test
and the reference comparison (both A/B, answered as \\boxed{}).

Prompts are ours (eval/prompts/) unless eval.judge.prompts names a folder; a file there
replaces ours of the same name, and `<domain>/judge_system_prompt.txt` (the benchmark's layout)
replaces the rubric's system prompt for that domain. Judgements are appended to judged.jsonl as
they arrive, so a killed judge run continues where it stopped. An unparseable judgement is
retried, then counted as failed.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

from lwm.domains import get_domain
from eval.client import ChatClient, EndpointError, run_concurrent
from eval.score import DIMENSIONS, sample_total

log = logging.getLogger("lwm.eval")
PROMPTS = Path(__file__).parent / "prompts"
_EVAL = re.compile(r"<evaluation>(.*?)</evaluation>", re.S)
_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")


def fill(template: str, **fields) -> str:
    """Substitute {name} for the given names only: templates may hold JSON braces."""
    for k, v in fields.items():
        template = template.replace("{" + k + "}", str(v))
    return template


class Prompts:
    def __init__(self, folder: str | Path = ""):
        self.folder = Path(folder) if folder else None
        if self.folder and not self.folder.is_dir():
            raise FileNotFoundError(f"eval.judge.prompts: {self.folder} is not a folder")

    def _read(self, name: str) -> str:
        if self.folder and (self.folder / name).exists():
            return (self.folder / name).read_text(encoding="utf-8")
        return (PROMPTS / name).read_text(encoding="utf-8")

    def messages(self, kind: str, domain: str, **fields) -> list[dict]:
        dom = get_domain(domain) if _known(domain) else None
        own = self.folder / domain / "judge_system_prompt.txt" if self.folder else None
        if kind == "rubric" and own is not None and own.exists():
            system = own.read_text(encoding="utf-8")
        else:
            system = fill(self._read(f"{kind}_system.txt"), domain=domain,
                          description=dom.description if dom else f"the {domain} environment",
                          observation_format=dom.observation_format if dom else "as the environment writes them")
        user = fill(self._read(f"{kind}_user.txt"), **fields).strip()
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _known(domain: str) -> bool:
    try:
        get_domain(domain)
        return True
    except KeyError:
        return False


def parse_rubric(text: str) -> dict | None:
    """The scores of a rubric judgement (integers 1-5, 0 where a dimension is missing or out of
    range), or None when no dimension is valid."""
    blocks = _EVAL.findall(text)
    body = blocks[-1] if blocks else text
    data = {}
    start = body.rfind("{\"") if not blocks else body.find("{")
    if start >= 0:
        try:
            data = json.loads(body[start:body.rfind("}") + 1])
        except json.JSONDecodeError:
            data = {}
    scores = {}
    for dim in DIMENSIONS:
        value = data.get(dim) if isinstance(data, dict) else None
        if value is None:  # a judge that wrote "format: 4" instead of JSON still counts
            m = re.search(rf"(?i)\"?{dim}\"?\s*[:=]\s*(\d+(?:\.\d+)?)", body)
            value = m.group(1) if m else 0
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = 0
        scores[dim] = v if 1 <= v <= 5 else 0
    total = sample_total(scores)
    if total is None:
        return None
    extra = data if isinstance(data, dict) else {}
    return {**scores, "total_score": total, "strengths": extra.get("strengths", []),
            "weaknesses": extra.get("weaknesses", [])}


def parse_boxed(text: str, allowed=("A", "B")) -> str | None:
    answers = [a.strip().strip("*").upper() for a in _BOXED.findall(text)]
    answers = [a for a in answers if a in {x.upper() for x in allowed}]
    return answers[-1] if answers else None


def _context(history: str) -> str:
    return f"# Earlier turns\n\n{history}" if history else "# Earlier turns\n\n(none: this is the first turn)"


def judge_one(client: ChatClient, prompts: Prompts, mode: str, item: dict, seed: int) -> dict:
    """One judgement row. item: task, id, history, current, prediction, reference (and, for
    reference mode, baseline)."""
    row = {"task": item["task"], "id": item["id"], "turn_idx": item.get("turn_idx"),
           "gen": item.get("gen", ""), "extracted_output": item["prediction"]}
    fields = {"context": _context(item["history"]), "current": item["current"],
              "prediction": item["prediction"], "reference": item["reference"]}
    if mode == "rubric":
        messages = prompts.messages("rubric", item["task"], **fields)
    else:
        other = item["reference"] if mode == "turing" else item["baseline"]
        side = random.Random(f"{seed}:{item['id']}").choice("AB")
        a, b = (item["prediction"], other) if side == "A" else (other, item["prediction"])
        row["model_side"] = side
        messages = prompts.messages(mode, item["task"], a=a, b=b, **fields)
    raw, parsed = "", None
    for _ in range(client.cfg.max_retries + 1):  # an unparseable answer is asked again
        try:
            raw = client.complete(messages)
        except EndpointError as e:
            raw = f"(endpoint error) {e}"
            break
        parsed = parse_rubric(raw) if mode == "rubric" else parse_boxed(
            raw, ("A", "B") if mode == "turing" else ("A", "B", "TIE"))
        if parsed is not None:
            break
    row["judge_raw_output"] = raw
    if parsed is None:
        return {**row, "failed": 1.0, "total_score": 0, "error_message": "judge output not parsed"}
    if mode == "rubric":
        return {**row, **parsed, "failed": 0.0}
    won = 0.5 if parsed == "TIE" else float(parsed == row["model_side"])
    return {**row, "answer": parsed, "failed": 0.0, ("fooled" if mode == "turing" else "win"): won}


def judge_all(jcfg, mode: str, items: list[dict], out_path: Path) -> list[dict]:
    """Judge every item (resuming from out_path); rows in the order of items."""
    done = {}
    if out_path.exists():
        for line in out_path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                done[r["id"]] = r
            except json.JSONDecodeError:
                break  # a line cut by a kill: redone
        out_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()))
    todo = [it for it in items if it["id"] not in done]
    if todo:
        client, prompts = ChatClient(jcfg), Prompts(jcfg.prompts)
        with open(out_path, "a", encoding="utf-8") as f:
            def write(item, row):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                done[item["id"]] = row
            run_concurrent(lambda it: judge_one(client, prompts, mode, it, jcfg.seed), todo,
                           jcfg.concurrency, write)
    return [done[it["id"]] for it in items]


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
