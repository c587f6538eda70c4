"""The LLM judge over an OpenAI-compatible endpoint, one implementation for eval, the RL reward
and the SFT teacher: the five-dimension rubric, the Turing test and the reference comparison
(both A/B, answered as \\boxed{}), and the guard against text aimed at the judge.

Prompts are ours (lwm/endpoints/prompts/) unless a judge's `prompts` names a folder; a file there
replaces ours of the same name, and `<domain>/judge_system_prompt.txt` (the benchmark's layout)
replaces the rubric's system prompt for that domain. Training (`Judge`: RL reward, SFT teacher)
also appends the domain's judge paragraph (Domain.judge_paragraph, by default
prompts/domains/<name>.txt) on what is deterministic (judged strictly) and what is pre-existing
or runtime content (judged for plausibility); eval keeps the benchmark's prompts as they are, so
its scores stay comparable. An unparseable judgement is retried, then counted as failed;
`judge_all` appends judgements to a file as they arrive, so a killed run continues where it
stopped.
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

log = logging.getLogger("lwm.endpoints")
PROMPTS = Path(__file__).parent / "prompts"
DIMENSIONS = ("format", "factuality", "consistency", "realism", "quality")
_EVAL = re.compile(r"<evaluation>(.*?)</evaluation>", re.S)
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


# ---- parsing ----

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


# ---- judging ----

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

    def score_all(self, items: list[dict]) -> list[tuple[float | None, dict]]:
        results: dict[int, tuple] = {}

        def one(i):
            try:
                return normalised(judge_one(self.client, self.prompts, "rubric", items[i], self.cfg.seed))
            except Exception as e:  # anything but an answer is a failed judgement, never a crash
                log.warning("judge: %s", e)
                return None, {}

        run_concurrent(one, range(len(items)), self.cfg.concurrency,
                       lambda i, r: results.__setitem__(i, r))
        return [results[i] for i in range(len(items))]
