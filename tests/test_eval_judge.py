"""Judge modes end to end against a local OpenAI-compatible test double.

The real judge (a hosted model) cannot be reached in tests, so the judge and the model under
test are local HTTP servers speaking the OpenAI chat API (our WorldModelServer with scripted
backends): the eval code talks to them through the openai client exactly as to a real endpoint.
"""

import json
import threading

import pytest

from eval.run import evaluate
from lwm.tracking import RunPaths
from serve.server import WorldModelServer
from tests.conftest import DATA, make_cfg

BENCH = DATA / "eval" / "bench"


class ScriptedJudge:
    """Rubric: scores from the prediction's length (a fixed rule, so totals are known);
    A/B: always answers A. The first call fails once (HTTP 500) to exercise retries; a
    prediction containing 'UNJUDGEABLE' gets an unparseable answer (counted as failed)."""

    def __init__(self):
        self.calls, self.lock = 0, threading.Lock()

    def __call__(self, requests):
        with self.lock:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("overloaded")
        out = []
        for r in requests:
            user = r.messages[-1]["content"]
            if "UNJUDGEABLE" in user:
                out.append("I refuse to grade this.")
            elif "\\boxed" in r.messages[0]["content"]:
                out.append("Reasoning... \\boxed{A}")
            else:
                out.append('<final_evaluation>{"scores": {"format": 5, "factuality": 3, "consistency": 4, '
                           '"realism": 4, "quality": 4}}</final_evaluation>')
        return out


def model_under_test(requests):
    """The 'world model' behind the endpoint: tags an echo of the action's first line."""
    out = []
    for r in requests:
        first = r.messages[-1]["content"].splitlines()[0]
        body = "UNJUDGEABLE" if "open_nodes" in r.messages[-1]["content"] else first
        out.append(f"<think>plan</think><predicted_observation>\n{body}\n</predicted_observation>")
    return out


@pytest.fixture
def servers():
    judge, model = ScriptedJudge(), model_under_test
    started = [WorldModelServer(judge, port=0, model_name="judge"),
               WorldModelServer(model, port=0, model_name="wm")]
    for s in started:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield judge, started[0].url, started[1].url
    for s in started:
        s.shutdown()
        s.server_close()


def _cfg(tmp_path, judge_url, model_url, mode, **judge):
    judge = {"base_url": judge_url, "model": "judge", "concurrency": 4, "max_retries": 2, **judge}
    return make_cfg(tmp_path, f"eval.input={BENCH}", "eval.max_samples=0", f"eval.mode={mode}",
                    f"eval.endpoint.base_url={model_url}", "eval.endpoint.model=wm",
                    "eval.endpoint.concurrency=4", *(f"eval.judge.{k}={v}" for k, v in judge.items()))


def test_unknown_mode_fails_at_start(tmp_path):
    cfg = make_cfg(tmp_path, "eval.mode=vibes")
    with pytest.raises(ValueError, match="eval.mode: unknown mode 'vibes'"):
        evaluate(cfg, RunPaths(tmp_path))


def test_judge_mode_scores_and_resumes(tmp_path, servers):
    judge, judge_url, model_url = servers
    summary = evaluate(_cfg(tmp_path, judge_url, model_url, "judge"), RunPaths(tmp_path))
    m = summary["results"]["wm"]["judge"]
    # every judged sample scored (5,3,4,4,4): total 4.0 -> 75.0; mcp turn 2 unparseable -> failed
    assert m["domains"]["terminal"] == pytest.approx(
        {"samples": 3, "valid": 3, "failed": 0, "format": 100.0, "factuality": 50.0,
         "consistency": 75.0, "realism": 75.0, "quality": 75.0, "total_score": 75.0})
    assert (m["domains"]["mcp"]["valid"], m["domains"]["mcp"]["failed"]) == (1, 1)
    assert m["macro"] == pytest.approx(75.0) and m["failed"] == 1
    judged = [json.loads(l) for l in (tmp_path / "eval" / "wm" / "judged.jsonl").read_text().splitlines()]
    assert all("reasoning" not in r["extracted_output"] and "plan" not in r["extracted_output"] for r in judged)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| wm |" in report and "75.00" in report and (tmp_path / "eval" / "per_domain.png").exists()
    # resume: a killed run's cut line is dropped and only the missing judgements are redone
    path = tmp_path / "eval" / "wm" / "judged.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    calls = judge.calls
    again = evaluate(_cfg(tmp_path, judge_url, model_url, "judge"), RunPaths(tmp_path))
    assert judge.calls - calls >= len(lines) - 3 - 1  # unparseable sample asked again (retries)
    assert again["results"]["wm"]["judge"]["macro"] == pytest.approx(75.0)


def test_turing_and_reference_modes_record_sides(tmp_path, servers):
    _, judge_url, model_url = servers
    summary = evaluate(_cfg(tmp_path, judge_url, model_url, "turing", seed=3), RunPaths(tmp_path))
    rows = [json.loads(l) for l in (tmp_path / "eval" / "wm" / "judged.jsonl").read_text().splitlines()]
    sides = {r["model_side"] for r in rows}
    assert sides == {"A", "B"}  # randomised per sample, recorded
    for r in rows:
        if r["failed"] == 0.0:  # the judge always answers A: fooled exactly when the model was A
            assert r["fooled"] == float(r["model_side"] == "A")
    assert 0.0 <= summary["results"]["wm"]["turing"]["macro"] <= 100.0
    baseline = tmp_path / "eval" / "wm" / "predictions.jsonl"
    ref_dir = tmp_path / "ref"
    summary = evaluate(_cfg(ref_dir, judge_url, model_url, "reference", baseline=str(baseline)),
                       RunPaths(ref_dir))
    assert "win" in summary["results"]["wm"]["reference"]["domains"]["terminal"]
