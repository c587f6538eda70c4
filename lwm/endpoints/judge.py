"""The LLM judge over an OpenAI-compatible endpoint, one implementation for eval, the RL reward
and the SFT teacher: the five-dimension rubric, the Turing test and the reference comparison
(both A/B, answered as \\boxed{}), and the guard against text aimed at the judge.

Prompts are ours (lwm/endpoints/prompts/) unless a judge's `prompts` names a folder; a file there
replaces ours of the same name, and `<domain>/judge_system_prompt.txt` (the benchmark's layout)
replaces the rubric's system prompt for that domain. Training (`Judge`: RL reward, SFT teacher)
also appends the domain's judge paragraph (Domain.judge_paragraph, by default
prompts/domains/<name>.txt) on what is deterministic (judged strictly) and what is pre-existing
or runtime content (judged for plausibility); eval keeps the benchmark's prompts as they are, so
its scores stay comparable.

A judgement is valid only when every field parses from the judge's final answer (`read_answer`,
the one parser: a rubric answer's five scores, an A/B answer's last \\boxed{}); a reply cut off
by max_tokens, a missing or non-numeric score, an empty reply are asked again, then count as a
failed judgement: reward 0 in RL, left out of eval's score and counted there. `judge_all`
appends judgements to a file as they arrive, keyed by what was asked, so a killed run continues
where it stopped and a rerun asks again exactly the failed ones and those whose question changed.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from statistics import mean

from lwm.domains import get_domain
from lwm.endpoints.client import ChatClient, EndpointError, run_concurrent
from lwm.endpoints.sample import view
from lwm.tracking import complete_rows
from lwm.identity import digest

log = logging.getLogger("lwm.endpoints")
PROMPTS = Path(__file__).parent / "prompts"
DIMENSIONS = ("format", "factuality", "consistency", "realism", "quality")
_OPEN, _CLOSE = "<evaluation>", "</evaluation>"
_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")


def sample_total(scores: dict) -> float | None:
    """Mean of the valid (1-5) dimensions; None when none is valid."""
    valid = [float(scores[d]) for d in DIMENSIONS if 1 <= float(scores.get(d) or 0) <= 5]
    return mean(valid) if valid else None


# ---- prompts ----

def fill(template: str, **fields) -> str:
    """Substitute {name} for the given names only: templates may hold JSON braces."""
    for k, v in fields.items():
        template = template.replace("{" + k + "}", str(v))
    return template


class Prompts:
    """The judge's chat messages per kind (rubric, turing, reference) and domain; with
    domain_guides, the rubric's system prompt ends with the domain's judging paragraph."""

    def __init__(self, folder: str | Path = "", domain_guides: bool = False):
        self.folder = Path(folder) if folder else None
        self.domain_guides = domain_guides
        if self.folder and not self.folder.is_dir():
            raise FileNotFoundError(f"judge.prompts: {self.folder} is not a folder")

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
        guide = dom.judge_paragraph() if dom and self.domain_guides and kind == "rubric" else ""
        if guide:
            system = system.rstrip() + "\n\n" + guide
        user = fill(self._read(f"{kind}_user.txt"), **fields).strip()
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _known(domain: str) -> bool:
    try:
        get_domain(domain)
        return True
    except KeyError:
        return False


# ---- parsing: the one place that reads a judge's answer ----

class Unparsed(ValueError):
    """A judge reply that is not a judgement; the message says why."""


def _final_object(answer: str) -> dict:
    """The JSON object that ends the answer (only whitespace or a code fence after it)."""
    for i, ch in enumerate(answer):
        if ch != "{":
            continue
        try:
            value, end = json.JSONDecoder().raw_decode(answer, i)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and not answer[end:].strip(" \t\r\n`"):
            return value
    raise Unparsed("no complete JSON object ends the answer (cut off, or not JSON)")


def read_rubric(text: str) -> dict:
    """The five scores (numbers from 1 to 5) of the final answer: the last <evaluation> block,
    which must be closed, or without tags the JSON object that ends the reply."""
    start = text.rfind(_OPEN)
    answer = text
    if start >= 0:
        answer = text[start + len(_OPEN):]
        if _CLOSE not in answer:
            raise Unparsed("the last <evaluation> block is not closed (the answer was cut off)")
        answer = answer[:answer.index(_CLOSE)]
    data = _final_object(answer)
    scores = {}
    for dim in DIMENSIONS:
        value = data.get(dim)
        if value is None:
            raise Unparsed(f"'{dim}' missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Unparsed(f"'{dim}' is not a number: {value!r}")
        if not 1 <= value <= 5:
            raise Unparsed(f"'{dim}' is {value}, not a score from 1 to 5")
        scores[dim] = value
    return {**scores, "total_score": mean(float(v) for v in scores.values()),
            "strengths": data.get("strengths", []), "weaknesses": data.get("weaknesses", [])}


def parse_rubric(text: str) -> dict | None:
    """read_rubric, or None when the reply is not a judgement."""
    try:
        return read_rubric(text)
    except Unparsed:
        return None


def parse_boxed(text: str, allowed=("A", "B")) -> str | None:
    """The final \\boxed{} answer when it is one of `allowed`; None otherwise (an earlier
    answer does not stand in for a final one that is no answer)."""
    found = list(_BOXED.finditer(text))
    if not found or text.rfind("\\boxed{") != found[-1].start():
        return None  # none, or the last one cut off
    answer = found[-1].group(1).strip().strip("*").upper()
    return answer if answer in {x.upper() for x in allowed} else None


def read_answer(mode: str, text: str):
    """The judgement of one reply: rubric scores, or the A/B(/TIE) answer. Raises Unparsed."""
    if not text.strip():
        raise Unparsed("empty reply")
    if mode == "rubric":
        return read_rubric(text)
    allowed = ("A", "B") if mode == "turing" else ("A", "B", "TIE")
    answer = parse_boxed(text, allowed)
    if answer is None:
        raise Unparsed(f"no final \\boxed{{{'|'.join(allowed)}}} answer")
    return answer


# ---- judging ----

def _context(history: str) -> str:
    return f"# Earlier turns\n\n{history}" if history else "# Earlier turns\n\n(none: this is the first turn)"


def judge_messages(prompts: Prompts, mode: str, item: dict, seed: int) -> tuple[list[dict], str | None]:
    """The chat messages asking for one judgement, and (A/B modes) the side holding the model's
    answer. item: task, id, history, current, prediction, reference (reference mode: baseline)."""
    fields = {"context": _context(item["history"]), "current": item["current"],
              "prediction": item["prediction"], "reference": item["reference"]}
    if mode == "rubric":
        return prompts.messages("rubric", item["task"], **fields), None
    other = item["reference"] if mode == "turing" else item["baseline"]
    side = random.Random(f"{seed}:{item['id']}").choice("AB")
    a, b = (item["prediction"], other) if side == "A" else (other, item["prediction"])
    return prompts.messages(mode, item["task"], a=a, b=b, **fields), side


def judgement_key(jcfg, messages: list[dict]) -> str:
    """What decides a judgement: the judge endpoint and its settings, and the question."""
    return digest({"judge": [jcfg.base_url.rstrip("/"), jcfg.model, jcfg.temperature, jcfg.max_tokens],
                   "messages": messages})


def judge_one(client: ChatClient, prompts: Prompts, mode: str, item: dict, seed: int) -> dict:
    """One judgement row; `failed` 1.0 with `error_message` when no valid judgement came back."""
    messages, side = judge_messages(prompts, mode, item, seed)
    row = {"task": item["task"], "id": item["id"], "turn_idx": item.get("turn_idx"),
           "gen": item.get("gen", ""), "extracted_output": item["prediction"],
           "key": judgement_key(client.cfg, messages)}
    if side:
        row["model_side"] = side
    raw, parsed, error = "", None, ""
    for _ in range(client.cfg.max_retries + 1):  # a reply that is no judgement is asked again
        try:
            raw = client.complete(messages)
        except EndpointError as e:
            raw, error = "", f"endpoint: {e}"
            break
        try:
            parsed = read_answer(mode, raw)
            break
        except Unparsed as e:
            error = f"not a judgement: {e}"
    row["judge_raw_output"] = raw
    if parsed is None:
        return {**row, "failed": 1.0, "total_score": 0, "error_message": error}
    if mode == "rubric":
        return {**row, **parsed, "failed": 0.0}
    won = 0.5 if parsed == "TIE" else float(parsed == side)
    return {**row, "answer": parsed, "failed": 0.0, ("fooled" if mode == "turing" else "win"): won}


def judge_all(jcfg, mode: str, items: list[dict], out_path: Path) -> list[dict]:
    """Judge every item; rows in the order of items. Valid judgements in out_path are reused when
    their key (judge and question) matches; failed ones, and those asked of another judge or
    about another prediction, are asked again."""
    prompts = Prompts(jcfg.prompts)
    keys = {it["id"]: judgement_key(jcfg, judge_messages(prompts, mode, it, jcfg.seed)[0]) for it in items}
    kept = complete_rows(out_path, "id", keep=lambda r: r.get("failed") == 0.0 and
                         keys.get(r["id"], r.get("key")) == r.get("key"))
    done = {i: r for i, r in kept.items() if i in keys}
    todo = [it for it in items if it["id"] not in done]
    if todo:
        client = ChatClient(jcfg)
        with open(out_path, "a", encoding="utf-8") as f:
            def write(item, row):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                done[item["id"]] = row
            run_concurrent(lambda it: judge_one(client, prompts, mode, it, jcfg.seed), todo,
                           jcfg.concurrency, write)
    return [done[it["id"]] for it in items]


# ---- the guard: text a real environment does not print but a policy gaming the judge would ----

# Self-assessment, requests for a score, words addressed to the grader, instructions to the reader.
_GUARD = [re.compile(p, re.I) for p in (
    r"\b(this|the|my|above|our)\s+(predicted\s+|simulated\s+)?(observation|output|prediction|response|"
    r"answer|simulation|result)\s+(is|was|looks|seems)\s+(\w+\s+)?(accurate|correct|perfect|realistic|"
    r"faithful|exact|flawless|identical|consistent|plausible|right)",
    r"\b(matches|identical\s+to|same\s+as)\s+(the\s+)?(real|reference|ground[\s-]?truth|actual|"
    r"expected)\s+(observation|output|environment|answer)",
    r"\b(rate|score|grade|mark|judge)\s+(this|it|me|the\s+(prediction|observation|output))\b",
    r"\b([1-5]|five)\s*(/|out\s+of)\s*5\b|\b(full|top|maximum|highest|perfect)\s+(marks|score|rating|points)",
    r"\b(as|dear|to|attention|note\s+(to|for)|hey|hello)\s+(the\s+|an?\s+|any\s+)?(ai\s+|llm\s+)?"
    r"(judge|grader|evaluator|reviewer|scorer|assessor)s?\b",
    r"\b(judge|grader|evaluator|reviewer|scorer)s?\s*(:|,|should|must|will|can|please)",
    r"\b(format|factuality|consistency|realism|quality)\s*[:=]\s*[1-5]\b",
    r"\b(ignore|disregard|forget|override)\s+(all\s+|any\s+)?(the\s+)?(previous|prior|above|earlier|"
    r"preceding|system|your)\s+(instructions?|prompts?|messages?|rules?|rubric|guidelines)",
    r"\b(new|updated)\s+instructions?\s*:|\byou\s+are\s+now\b|\bsystem\s+prompt\b",
    r"\bground[\s-]?truth\b|\breference\s+observation\b",
)]


def judge_directed(observation: str, reference: str = "") -> list[str]:
    """Phrases of a predicted observation aimed at its grader. A phrase the real observation
    contains too is the environment's own text (a web page or file can say anything) and passes."""
    ref = reference.lower()
    hits = [m.group(0) for p in _GUARD for m in p.finditer(observation)]
    return [h for h in hits if h.lower() not in ref]


# ---- the rubric judge of training (RL reward, SFT teacher) ----

def rubric_item(prompt: list[dict], reference: str, domain: str, prediction: str, sid: str) -> dict:
    """What judge_one expects, from a chat prompt (history, current action)."""
    sample = view({"id": sid, "task": domain, "prompt": prompt, "response": [reference]})
    return {"task": domain, "id": sid, "history": sample.history, "current": sample.current,
            "prediction": prediction, "reference": sample.reference}


def normalised(row: dict) -> tuple[float | None, dict]:
    """A judgement row's total and dimensions mapped from 1-5 onto [0, 1]; None when failed."""
    if row.get("failed", 1.0) != 0.0:
        return None, {}
    dims = {d: (float(row[d]) - 1) / 4 for d in DIMENSIONS if 1 <= float(row.get(d) or 0) <= 5}
    return (float(row["total_score"]) - 1) / 4, dims


class Judge:
    """The rubric judge behind an OpenAI-compatible endpoint: many judgements at once, each
    (total, dimensions) on [0, 1]; a failure of any kind is (None, {}), never an exception."""

    def __init__(self, jcfg):
        self.cfg, self.client = jcfg, ChatClient(jcfg)
        self.prompts = Prompts(jcfg.prompts, domain_guides=True)
        self.last_failure = ""  # why the latest failed judgement failed, for error messages

    def score_all(self, items: list[dict]) -> list[tuple[float | None, dict]]:
        results: dict[int, tuple] = {}

        def one(i):
            try:
                row = judge_one(self.client, self.prompts, "rubric", items[i], self.cfg.seed)
            except Exception as e:  # anything but an answer is a failed judgement, never a crash
                row = {"failed": 1.0, "error_message": f"{type(e).__name__}: {e}"}
            if row["failed"]:
                self.last_failure = row["error_message"]
                log.debug("judge %s: %s", self.cfg.base_url, row["error_message"][:300])
            return normalised(row)

        run_concurrent(one, range(len(items)), self.cfg.concurrency,
                       lambda i, r: results.__setitem__(i, r))
        return [results[i] for i in range(len(items))]
