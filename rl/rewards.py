"""RL reward: w_rubric * LLM-judge rubric + w_rule * rule verifier, guarded against text aimed
at the judge.

Only the observation extracted from <predicted_observation> reaches the judge and the rules;
reasoning is never scored. The rubric is the library's five-dimension judge (lwm/endpoints/judge.py:
prompts with the domain's judging paragraph, parsing, retries). A failed judgement (no answer,
or one that is not a complete judgement) gives rubric 0 and is counted; when more than
rl.judge_max_failure_rate of the last rl.judge_failure_window judgements failed, training stops
with JudgeFailureError rather than go on optimising the rule reward alone. An
observation that praises itself or addresses the grader (judge_directed) is not sent to the
judge at all (the injection never reaches it), earns no rubric or rule reward and pays the guard
penalty, so it always scores below the same observation without that text.
"""

from __future__ import annotations

from collections import Counter, deque
from statistics import mean

from lwm.domains import extract_observation, get_domain
from lwm.endpoints.judge import DIMENSIONS, Judge, judge_directed, rubric_item


def _text(completion) -> str:
    # Conversational datasets give [{"role": "assistant", "content": ...}]; plain ones a string.
    return completion[-1]["content"] if isinstance(completion, list) else completion


class JudgeFailureError(RuntimeError):
    """The judge failed too often to train on its rubric."""


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
        if not 0.0 <= rcfg.judge_max_failure_rate <= 1.0 or rcfg.judge_failure_window < 1:
            raise ValueError("rl.judge_max_failure_rate must be in [0, 1] (1.0 = never stop) and "
                             "rl.judge_failure_window >= 1")
        self.max_failure_rate = rcfg.judge_max_failure_rate
        self.recent: deque = deque(maxlen=rcfg.judge_failure_window)  # True = failed

    def check_judge(self, final: bool = False) -> None:
        """Raise JudgeFailureError once more than max_failure_rate of a window's judgements
        failed: over the last full window, or earlier when the failures so far already exceed
        what a whole window allows; at the end of training (`final`), over the judgements there
        were, so a run shorter than a window cannot train through a dead judge either."""
        window, failed = self.recent.maxlen, sum(self.recent)
        limit = self.max_failure_rate * (len(self.recent) if final else window)
        if self.judge is None or self.max_failure_rate >= 1.0 or not self.recent or failed <= limit:
            return
        n, jcfg = len(self.recent), self.judge.cfg
        model = f" (model '{jcfg.model}')" if jcfg.model else ""
        last = self.judge.last_failure[:300].rstrip(". ") or "?"
        raise JudgeFailureError(
            f"rl: {failed} of the last {n} judgements failed ({failed / n:.0%}) at the judge "
            f"{jcfg.base_url}{model}, more than rl.judge_max_failure_rate={self.max_failure_rate} "
            f"over rl.judge_failure_window={window}; a failed judgement earns rubric 0, so training "
            f"on would optimise the rule reward alone. Last failure: {last}. Fix the judge (rl.judge.*) and "
            "rerun (training resumes from its last checkpoint), or set rl.judge_max_failure_rate=1.0 "
            "to train through judge failures.")

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
                self.recent.append(total is None)
                rubric[i] = total or 0.0
                for d, v in ds.items():
                    dims[d].append(v)
            self.counts.update(judged=len(ask), judge_failed=failed)
            if log_metric and ask:
                log_metric("judge/failure_rate", failed / len(ask))
                for d, vs in dims.items():
                    if vs:
                        log_metric(f"rubric/{d}", mean(vs))
            self.check_judge()
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
