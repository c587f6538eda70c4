"""The judge aggregation matches AgentWorldBench's published formula; rule metrics behave."""

import json

import pytest

from eval.data import load_eval_set
from eval.score import aggregate_judged, bleu, chrf, follows_instruction, long_context_consistency, rouge_l
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
