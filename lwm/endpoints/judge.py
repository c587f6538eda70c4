"""The LLM judge over an OpenAI-compatible endpoint, one implementation for eval, the RL reward
and the SFT teacher: the five-dimension rubric, the Turing test and the reference comparison
(both A/B, answered as \\boxed{}), and the guard against text aimed at the judge.

Prompts (class Prompts) are ours, per domain (lwm/endpoints/prompts/: the rubric's system prompt
with the domain's description, observation format and judging paragraph on what is deterministic
and what is pre-existing or runtime content, score anchors and a rule against manipulation; the
user prompt asks for the benchmark's answer format), unless a judge's `prompts` names a folder:
a local copy of the benchmark's prompts/ gives its per-domain judge prompts and its own user
template, filled as its evaluation fills it. Eval, the RL reward and the SFT teacher judge with
the same prompts.

A judgement is valid only when every field parses from the judge's final answer (`read_answer`,
the one parser: a rubric answer's five scores from its <final_evaluation> block, read as the
benchmark reads them; an A/B answer's last \\boxed{}); a reply cut off by max_tokens, a missing
or non-numeric score, an empty reply are asked again, then count as a
failed judgement: reward 0 in RL, left out of eval's score and counted there. `judge_all`
appends judgements to a file as they arrive, keyed by what was asked, so a killed run continues
where it stopped and a rerun asks again exactly the failed ones and those whose question changed.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
from pathlib import Path
from statistics import mean

from lwm.domains import get_domain
from lwm.domains.base import last_tagged, strip_reasoning
from lwm.endpoints.client import ChatClient, EndpointError, run_concurrent
from lwm.endpoints.sample import view
from lwm.tracking import complete_rows
from lwm.identity import digest

log = logging.getLogger("lwm.endpoints")
PROMPTS = Path(__file__).parent / "prompts"
DIMENSIONS = ("format", "factuality", "consistency", "realism", "quality")
ANSWER_TAG = "final_evaluation"  # the benchmark judge's answer block
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


def judge_fields(item: dict) -> dict:
    """The fields of a judge's user prompt, laid out as the benchmark's judge-message builder
    lays them out (context headed and ending in a blank line, or empty on turn 1; the current
    turn; the prediction and the real observation in code fences), plus the raw parts for the
    A/B templates."""
    history = item["history"]
    return {"context": f"# Context (Historical Interactions):\n\n{history}\n\n" if history else "",
            "world_model_input": f"# Current Turn:\n\n{item['current']}",
            "predicted_observation": f"**World Model Output (Simulated):**\n```\n{item['prediction']}\n```",
            "ground_truth": f"**Ground Truth (Real Output):**\n```\n{item['reference']}\n```",
            "current": item["current"], "prediction": item["prediction"], "reference": item["reference"]}


# Where the benchmark's repository keeps its judge's user template (a Python string constant),
# relative to its prompts/ folder or to the repository itself.
_BENCH_TEMPLATE = ("../eval/lwm_eval_utils/task_configs.py", "eval/lwm_eval_utils/task_configs.py")
_BENCH_FIELDS = ("context", "world_model_input", "predicted_observation", "ground_truth")


def _benchmark_template(folder: Path) -> str | None:
    """JUDGE_USER_PROMPT of a local copy of the benchmark's repository, read as data (the file
    is parsed, never run); None when the folder is not in such a copy."""
    for rel in _BENCH_TEMPLATE:
        path = folder / rel
        if not path.exists():
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "JUDGE_USER_PROMPT"
                                                     for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                return node.value.value
    return None


class Prompts:
    """The judge's chat messages per kind (rubric, turing, reference) and domain, the same for
    eval and training. Ours (lwm/endpoints/prompts/) are per domain: the rubric's system prompt
    carries the domain's description, observation format and judging paragraph. A `folder`
    overrides them: a file there replaces ours of the same name, `<domain>/judge_system_prompt.txt`
    (the benchmark's prompts/ layout) is that domain's rubric system prompt as it is, and when the
    folder is the prompts/ folder of a local copy of the benchmark's repository (or the copy
    itself), the rubric's user prompt is the benchmark's own template, filled as its evaluation
    fills it: the judge then gets exactly the benchmark's messages."""

    def __init__(self, folder: str | Path = ""):
        self.folder = Path(folder) if folder else None
        if self.folder and not self.folder.is_dir():
            raise FileNotFoundError(f"judge.prompts: {self.folder} is not a folder")
        self.bench_user = None
        if self.folder and not (self.folder / "rubric_user.txt").exists():
            self.bench_user = _benchmark_template(self.folder)
            if self.bench_user is not None and (self.folder / "prompts").is_dir():
                self.folder = self.folder / "prompts"  # the repository itself: its prompts/

    def _read(self, name: str) -> str:
        if self.folder and (self.folder / name).exists():
            return (self.folder / name).read_text(encoding="utf-8")
        return (PROMPTS / name).read_text(encoding="utf-8")

    def system(self, kind: str, domain: str) -> str:
        own = self.folder / domain / "judge_system_prompt.txt" if self.folder else None
        if kind == "rubric" and own is not None and own.exists():
            return own.read_text(encoding="utf-8")
        dom = get_domain(domain) if _known(domain) else None
        return fill(self._read(f"{kind}_system.txt"), domain=domain,
                    description=dom.description if dom else f"the {domain} environment",
                    observation_format=dom.observation_format if dom else "as the environment writes them",
                    guide=(dom.judge_paragraph() if dom else "") or "Judge every detail of the "
                    "observation against the real one, allowing only runtime values (times, ids) to differ.")

    def messages(self, kind: str, domain: str, **fields) -> list[dict]:
        if kind == "rubric" and self.bench_user is not None:
            user = self.bench_user.format(**{k: fields[k] for k in _BENCH_FIELDS}).strip()
        else:
            user = fill(self._read(f"{kind}_user.txt"), **fields).strip()
        return [{"role": "system", "content": self.system(kind, domain)},
                {"role": "user", "content": user}]


def _known(domain: str) -> bool:
    try:
        get_domain(domain)
        return True
    except KeyError:
        return False


# ---- parsing: the one place that reads a judge's answer ----

class Unparsed(ValueError):
    """A judge reply that is not a judgement; the message says why."""


_FENCED = re.compile(r"```(?:json)?\s*([\s\S]*?)\s*```")


def _objects(text: str) -> list[str]:
    """Candidate JSON objects of `text`, latest first: fenced ```json blocks, then every
    balanced {...} (the benchmark's extraction strategies, in its order)."""
    fenced = [m.group(1).strip() for m in _FENCED.finditer(text)]
    found = [c for c in fenced if c.startswith("{") and c.endswith("}")]
    depth, start, in_str, escape, spans = 0, -1, False, False, []
    for i, ch in enumerate(text):
        if escape:
            escape = False
        elif ch == "\\" and in_str:
            escape = True
        elif ch == '"':
            in_str = not in_str
        elif not in_str and ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif not in_str and ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return found[::-1] + spans[::-1]


def _loads(text: str):
    """json.loads, then again after the benchmark's repairs (trailing commas, single-quoted or
    bare keys)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        fixed = re.sub(r",(\s*[}\]])", r"\1", text)
        fixed = re.sub(r"'(\w+)'(\s*:)", r'"\1"\2', fixed)
        fixed = re.sub(r'([{,])\s*([A-Za-z_]\w*)\s*:', r'\1"\2":', fixed)
        try:
            return json.loads(fixed)
        except json.JSONDecodeError:
            return None


def _score(value) -> float | None:
    """A dimension's value as the benchmark reads it: an integer; a float rounded; a string's
    number before any '/' ("3/5" is 3); then clamped into 1-5. None: not a score (non-positive,
    missing, another type)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(round(value))
    elif isinstance(value, str):
        try:
            value = int(value.split("/")[0].strip())
        except ValueError:
            return None
    if not isinstance(value, int) or value <= 0:
        return None
    return max(1, min(5, value))


def read_rubric(text: str) -> dict:
    """The five scores of the final answer, in the benchmark's judge format: reasoning removed
    (a scores block inside <think> is not an answer), then the last <final_evaluation> block (or
    the whole reply without one), then its latest JSON object holding a "scores" object. Values
    are read with the benchmark's rounding, fraction and clamping rules (`_score`). Stricter than
    the benchmark: every dimension must be a score (the benchmark averages the valid ones), so a
    partial answer is asked again rather than scored on fewer dimensions."""
    answer = strip_reasoning(text.strip(), ANSWER_TAG)
    block = last_tagged(answer, ANSWER_TAG)
    target = answer if block is None else block
    data = next((d for d in map(_loads, _objects(target))
                 if isinstance(d, dict) and isinstance(d.get("scores"), dict)), None)
    if data is None:
        raise Unparsed(f"no JSON object with a \"scores\" object in the final answer"
                       f"{'' if block is not None else ' (no <' + ANSWER_TAG + '> block)'}: cut off, or not JSON")
    scores = {}
    for dim in DIMENSIONS:
        value = _score(data["scores"].get(dim))
        if value is None:
            raise Unparsed(f"'{dim}' is not a score from 1 to 5: {data['scores'].get(dim)!r}")
        scores[dim] = value
    listed = lambda v: [str(x) for x in v] if isinstance(v, list) else ([v] if isinstance(v, str) and v else [])
    return {**scores, "total_score": mean(float(v) for v in scores.values()),
            "strengths": listed(data.get("strengths", [])), "weaknesses": listed(data.get("weaknesses", []))}


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

def judge_messages(prompts: Prompts, mode: str, item: dict, seed: int) -> tuple[list[dict], str | None]:
    """The chat messages asking for one judgement, and (A/B modes) the side holding the model's
    answer. item: task, id, history, current, prediction, reference (reference mode: baseline)."""
    fields = judge_fields(item)
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
    if mode == "rubric" and "gen" in item and not item["gen"]:
        # the benchmark's rule: an empty generation is a failed sample, not judged
        return {**row, "judge_raw_output": "", "failed": 1.0, "total_score": 0,
                "error_message": "No model generation"}
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
        self.prompts = Prompts(jcfg.prompts)
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
