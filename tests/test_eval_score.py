"""The judge aggregation matches AgentWorldBench's published formula; rule metrics behave."""

import difflib
import json
import random
import statistics
from collections import Counter

import pytest

from eval.data import load_eval_set
from eval.score import (_matches, _mean, aggregate_judged, bleu, chrf, follows_instruction,
                        long_context_consistency, rouge_l)
from lwm.domains.base import similarity
from lwm.endpoints.judge import parse_boxed, parse_rubric, sample_total
from lwm.endpoints.sample import view
from tests.conftest import DATA

JUDGED = DATA / "eval" / "judged_agentworldbench.jsonl"


def test_judged_file_matches_hand_computed_scores():
    rows = [json.loads(l) for l in JUDGED.read_text().splitlines()]
    agg = aggregate_judged(rows)
    d = agg["domains"]
    # By hand. terminal: valid totals 4.0 (5,4,4,3,4), 2.6 (3,3,2,2,3), 4.5 (5,_,5,4,4: the 0 is
    # invalid) -> mean 3.7 -> (3.7-1)/4*100 = 67.5; one failed. format: mean(5,3,5) = 13/3 ->
    # 83.33; factuality: mean(4,3) (the 0 skipped) = 3.5 -> 62.5.
    assert d["terminal"]["total_score"] == pytest.approx(67.5, abs=0.01)
    assert d["terminal"]["format"] == pytest.approx(83.33, abs=0.01)
    assert d["terminal"]["factuality"] == pytest.approx(62.5, abs=0.01)
    assert (d["terminal"]["valid"], d["terminal"]["failed"]) == (3, 1)
    # mcp: 1.6 and 4.6 -> 3.1 -> 52.5. search ("agentworld/search" is the search domain):
    # 1.0 and 3.2 -> 2.1 -> 27.5.
    assert d["mcp"]["total_score"] == pytest.approx(52.5, abs=0.01)
    assert d["search"]["total_score"] == pytest.approx(27.5, abs=0.01)
    # Overall as published = macro over domains: (67.5 + 52.5 + 27.5) / 3 = 49.17.
    assert agg["macro"] == pytest.approx(49.17, abs=0.01)
    # micro over the 7 valid samples: 21.5 / 7 = 3.0714 -> 51.79.
    assert agg["micro"] == pytest.approx(51.79, abs=0.01)
    assert (agg["valid"], agg["failed"]) == (7, 2)
    for r in rows:
        if r["failed"] == 0.0:
            assert sample_total(r) == pytest.approx(r["total_score"])


def test_published_overall_is_the_macro_mean():
    # Qwen-AgentWorld-35B-A3B's row of the published table: Overall 56.39 is the domain mean.
    row = [64.79, 36.69, 53.96, 65.63, 58.17, 49.55, 65.92]
    assert sum(row) / len(row) == pytest.approx(56.39, abs=0.01)


def test_judge_output_parsing():
    ok = 'Good format.\n<final_evaluation>{"scores": {"format": 4, "factuality": 2, "consistency": 3, ' \
         '"realism": 3, "quality": 3}, "strengths": ["layout"]}</final_evaluation>'
    parsed = parse_rubric(ok)
    assert parsed["consistency"] == 3 and parsed["total_score"] == pytest.approx(3.0)
    assert parsed["strengths"] == ["layout"]
    # strict: every dimension, a score from 1 to 5, in the final answer (tests/test_faults_judge.py)
    assert parse_rubric(ok.replace('"consistency": 3', '"consistency": 0')) is None
    assert parse_rubric("format: 5, factuality: 4") is None
    assert parse_rubric("I cannot judge this.") is None
    assert parse_boxed("A looks real... final: \\boxed{B}") == "B"
    assert parse_boxed("\\boxed{tie}", ("A", "B", "TIE")) == "TIE"
    assert parse_boxed("\\boxed{C}") is None


def test_similarity_metrics():
    ref = "user@box:~$ ls\nnotes.txt  src\nuser@box:~$"
    assert chrf(ref, ref) == pytest.approx(1.0) and rouge_l(ref, ref) == pytest.approx(1.0)
    assert bleu(ref, ref) == pytest.approx(1.0)
    near, far = "user@box:~$ ls\nnotes.txt\nuser@box:~$", "Traceback: KeyError"
    for metric in (chrf, rouge_l, bleu):
        assert 0.0 <= metric(far, ref) < metric(near, ref) < 1.0


def test_chrf_values_from_its_definition():
    # "abc" vs "abd": 1-grams 2 of 3 match, 2-grams 1 of 2, 3-grams 0 of 1, no 4..6-grams in
    # either: P = R = mean(2/3, 1/2, 0) = 7/18, and F_beta with P = R is P.
    assert chrf("abc", "abd") == pytest.approx(7 / 18, abs=1e-12)
    # clipping: "aaa" vs "aa": 1-grams 2 (P 2/3, R 2/2), 2-grams 1 (P 1/2, R 1/1), 3-grams only
    # in one text (skipped): P = 7/12, R = 1, F = 5 P R / (4 P + R) = 35/40.
    assert chrf("aaa", "aa") == pytest.approx(0.875, abs=1e-12)
    assert chrf("a  b\n", " a\tb") == 1.0           # whitespace runs are one space
    assert chrf("éé", "é") == pytest.approx(5 / 6, abs=1e-12)   # not ASCII: ids, same counts
    assert chrf("", "x") == 0.0 and chrf(" ", "\n") == 1.0


def test_rouge_l_values_from_its_definition():
    # tokens a b c d / a c b d: LCS 3 (a b d), P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75, abs=1e-12)
    # "x a y b" vs "a b": LCS 2, P = 2/4, R = 2/2, F1 = 2/3; punctuation is a token
    assert rouge_l("x a y b", "a b") == pytest.approx(2 / 3, abs=1e-12)
    assert rouge_l("ls -la", "ls la") == pytest.approx(0.8, abs=1e-12)   # 2 of 3 and 2 of 2
    assert rouge_l("a b c", "a b d", cap=2) == 1.0    # only the first `cap` tokens count
    assert rouge_l("", "") == 1.0 and rouge_l("a", "") == 0.0


def test_bleu_values_from_its_definition():
    # a b c d / a b c e: matches 3/4; 2/3 -> (2+1)/(3+1); 1/2 -> 2/3; 0/1 -> 1/2; no brevity
    # penalty (equal lengths): (3/4 * 3/4 * 2/3 * 1/2) ** (1/4)
    assert bleu("a b c d", "a b c e") == pytest.approx((3 / 16) ** 0.25, abs=1e-12)
    # clipping: "the the the" vs "the cat": 1/3; (0+1)/(2+1); (0+1)/(1+1); (0+1)/(0+1); the
    # prediction is longer: no penalty
    assert bleu("the the the", "the cat") == pytest.approx((1 / 18) ** 0.25, abs=1e-12)
    # shorter prediction: "a b" vs "a b c d": 1, (1+1)/(1+1), 1/1, 1/1, penalty exp(1 - 4/2)
    assert bleu("a b", "a b c d") == pytest.approx(0.36787944117144233, abs=1e-12)
    assert bleu("x", "y") == 0.0


def test_similarity_is_sequence_matcher_not_lcs():
    # lines ab,cd / ab,ce: line F1 1/2; SequenceMatcher: block "ab\nc", 4 of 5 + 5 -> 0.8
    assert similarity("ab\ncd", "ab\nce") == pytest.approx(0.5 * 0.5 + 0.5 * 0.8, abs=1e-12)
    # SequenceMatcher takes the longest block first ("QQ", at opposite ends) and finds nothing
    # beside it: 2 * 2 / 18; an LCS ratio would count a b c d: 2 * 4 / 18. One line each: F1 0.
    assert similarity("QQaXbXcXd", "aYbYcYdQQ") == pytest.approx(0.5 * 4 / 18, abs=1e-12)
    assert similarity(" x\n", "x") == 1.0 and similarity("", "x") == 0.0


def test_native_counts_equal_the_plain_definitions():
    """Random texts, small and large vocabularies (the packed codes and the Counter fallback):
    clipped n-gram matches, the SequenceMatcher ratio and the mean equal their plain forms."""
    rng = random.Random(0)
    for trial in range(300):
        vocab = rng.choice((1, 2, 5, 60, 126, 127, 200, 254, 255, 300, 20000))
        x = [rng.randint(1, vocab) for _ in range(rng.randrange(0, 60))]
        y = x[:rng.randrange(len(x) + 1)] + [rng.randint(1, vocab) for _ in range(rng.randrange(0, 20))]
        n = rng.choice((1, 4, 6))
        want = [sum((Counter(tuple(x[i:i + k]) for i in range(len(x) - k + 1))
                     & Counter(tuple(y[i:i + k]) for i in range(len(y) - k + 1))).values())
                for k in range(1, n + 1)]
        assert _matches(x, y, n, vocab) == want, (x, y, n, vocab)
        a = "".join(rng.choice("ab \nc") for _ in range(rng.randrange(1, 80)))
        b = a[:rng.randrange(len(a))] + "".join(rng.choice("abc\n") for _ in range(9))
        ratio = difflib.SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()
        p, r = a.strip().splitlines(), b.strip().splitlines()
        f1 = 2 * sum((Counter(l.rstrip() for l in p) & Counter(l.rstrip() for l in r)).values()) \
            / (len(p) + len(r)) if p and r else float(p == r)
        assert similarity(a, b) == (1.0 if a.strip() == b.strip() else 0.5 * f1 + 0.5 * ratio)
        xs = [rng.random() * 10 ** rng.randint(-5, 3) for _ in range(rng.randint(1, 7))]
        assert _mean(xs) == statistics.mean(xs)


def test_behaviour_checks():
    history = "cd proj\nuser@box:~/proj$ echo x > conf_v2.ini"
    ref = "cat: conf_v2.ini: No such file or directory"
    assert long_context_consistency("cat: conf_v2.ini: gone", ref, history) == 1.0
    assert long_context_consistency("cat: config: gone", ref, history) == 0.0
    assert long_context_consistency("x", "nothing carried", history) is None
    assert follows_instruction("error", "bash: foo: command not found")
    assert follows_instruction("withhold", "No results found for 'zzz'.")
    assert follows_instruction("paginate", "Showing 10 of 42 results (page 1)")
    assert not follows_instruction("error", "user@box:~$")


def test_benchmark_layout_is_viewed_with_real_history():
    recs = load_eval_set(DATA / "eval" / "bench", 0)
    assert {r["task"] for r in recs} == {"terminal", "mcp"} and all(isinstance(r["id"], str) for r in recs)
    s = view(next(r for r in recs if r["task"] == "terminal" and r["turn_idx"] == 3))
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert s.messages[2]["content"].startswith("**Environment Observation:**")  # real, earlier turn
    assert s.reference.startswith("user@box:~/proj$ cat conf_v2.ini") and "conf_v2.ini" in s.history
    assert s.messages[-1]["content"] == s.current and "missing.txt" in s.current
