"""RL reward: w_rubric * LLM-judge rubric + w_rule * rule verifier, guarded against text aimed
at the judge.

Only the observation extracted from <predicted_observation> reaches the judge and the rules;
reasoning is never scored. The rubric is eval's five-dimension judge (eval/judge.py: prompts,
parsing, retries) with a per-domain paragraph from rl/judge_prompts/ on what is deterministic
(judged strictly) and what is pre-existing or runtime content (judged for plausibility). A failed
or unparseable judgement gives rubric 0 and is counted, so an outage lowers the signal but never
stops training. An observation that praises itself or addresses the grader is not sent to the
judge at all (the injection never reaches it), earns no rubric or rule reward and pays the guard
penalty, so it always scores below the same observation without that text.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from statistics import mean

from eval.client import ChatClient, run_concurrent
from eval.data import view
from eval.judge import Prompts, judge_one
from eval.score import DIMENSIONS
from lwm.domains import extract_observation, get_domain

log = logging.getLogger("lwm.rl")
DOMAIN_PROMPTS = Path(__file__).parent / "judge_prompts"

# Text a real environment does not print but a policy gaming an LLM judge would: self-assessment,
# requests for a score, words addressed to the grader, instructions to the reader.
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


class RubricPrompts(Prompts):
    """eval's rubric prompts with the domain's judging paragraph appended to the system prompt."""

    def messages(self, kind: str, domain: str, **fields) -> list[dict]:
        messages = super().messages(kind, domain, **fields)
        guide = DOMAIN_PROMPTS / f"{domain}.txt"
        if kind == "rubric" and guide.exists():
            messages[0] = {"role": "system",
                           "content": messages[0]["content"].rstrip() + "\n\n" + guide.read_text().strip()}
        return messages


def rubric_item(prompt: list[dict], reference: str, domain: str, prediction: str, sid: str) -> dict:
    """What eval's judge_one expects, from a chat prompt (history, current action)."""
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
    """The rubric judge behind an OpenAI-compatible endpoint: many judgements at once."""

    def __init__(self, jcfg):
        self.cfg, self.client = jcfg, ChatClient(jcfg)
        self.prompts = RubricPrompts(jcfg.prompts)

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


def _text(completion) -> str:
    # Conversational datasets give [{"role": "assistant", "content": ...}]; plain ones a string.
    return completion[-1]["content"] if isinstance(completion, list) else completion


class HybridReward:
    """TRL reward functions sharing one scoring pass per batch: `rubric`, `rule` and `guard`
    are weighted into the reward (TRL logs each as rewards/<name>/mean); `rule_format` and
    `rule_content` are logged with weight 0. Rubric dimensions, judge failure rate and guard
    rate go to TRL's logs through log_metric; run totals are in `counts`."""

    def __init__(self, rcfg):
        self.judge = Judge(rcfg.judge) if rcfg.judge.base_url else None
        if rcfg.guard_penalty <= 0:
            raise ValueError("rl.guard_penalty must be > 0 so judge-directed text never pays")
        self.weights = {"rubric": rcfg.rubric_weight, "rule": rcfg.rule_weight} if self.judge \
            else {"rule": 1.0}  # without a judge the reward is the rule verifier's, as before
        self.weights.update(guard=rcfg.guard_penalty, rule_format=0.0, rule_content=0.0)
        self.counts: Counter = Counter()
        self._key, self._scores = None, {}

    def funcs(self) -> tuple[list, list[float]]:
        return [getattr(self, n) for n in self.weights], list(self.weights.values())

    def score(self, completions, reference, domain, prompts=None, id=None, log_metric=None, **_) -> dict:
        key = (tuple(map(_text, completions)), tuple(reference))
        if key == self._key:
            return self._scores
        n = len(completions)
        obs = [extract_observation(_text(c))[0] for c in completions]
        verdicts = [get_domain(d).verify(_text(c), r) for c, r, d in zip(completions, reference, domain)]
        guarded = [bool(judge_directed(o, r)) for o, r in zip(obs, reference)]
        rubric, dims = [0.0] * n, {d: [] for d in DIMENSIONS}
        if self.judge:
            ask = [i for i in range(n) if not guarded[i]]
            items = [rubric_item(prompts[i] if prompts else [], reference[i], domain[i], obs[i],
                                 str(id[i]) if id else str(i)) for i in ask]
            judged = self.judge.score_all(items)
            failed = 0
            for i, (total, ds) in zip(ask, judged):
                failed += total is None
                rubric[i] = total or 0.0
                for d, v in ds.items():
                    dims[d].append(v)
            self.counts.update(judged=len(ask), judge_failed=failed)
            if log_metric and ask:
                log_metric("judge/failure_rate", failed / len(ask))
                for d, vs in dims.items():
                    if vs:
                        log_metric(f"rubric/{d}", mean(vs))
        self.counts.update(samples=n, guarded=sum(guarded))
        if log_metric:
            log_metric("guard/flagged_rate", sum(guarded) / n)
        keep = [0.0 if g else 1.0 for g in guarded]
        self._key, self._scores = key, {
            "rubric": [r * k for r, k in zip(rubric, keep)],
            "rule": [v.score * k for v, k in zip(verdicts, keep)],
            "guard": [-1.0 if g else 0.0 for g in guarded],
            "rule_format": [v.format for v in verdicts],
            "rule_content": [v.content for v in verdicts]}
        return self._scores

    # One method per reward component: TRL names its metrics after them.
    def rubric(self, completions, **kw) -> list[float]:
        """The judge's mean of the five dimensions on [0, 1]; 0 when failed or guarded."""
        return self.score(completions, **kw)["rubric"]

    def rule(self, completions, **kw) -> list[float]:
        """The domain's rule verifier on [0, 1]: format and content against the real observation."""
        return self.score(completions, **kw)["rule"]

    def guard(self, completions, **kw) -> list[float]:
        """-1 for an observation with judge-directed text, else 0 (weighted by rl.guard_penalty)."""
        return self.score(completions, **kw)["guard"]

    def rule_format(self, completions, **kw) -> list[float]:
        return self.score(completions, **kw)["rule_format"]

    def rule_content(self, completions, **kw) -> list[float]:
        return self.score(completions, **kw)["rule_content"]

    def total(self, completions, **kw) -> list[float]:
        """The weighted reward as TRL sums it, for tests and offline scoring."""
        s = self.score(completions, **kw)
        return [sum(self.weights[k] * s[k][i] for k in self.weights) for i in range(len(completions))]
