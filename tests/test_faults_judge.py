"""Judging and evaluation that cannot lie, with the fault injected (issue 15).

A truncated or incomplete judge answer is a failed judgement: reward 0 in RL, left out of the
eval score and counted, retried on rerun. RL stops when its judge fails too often. Eval caches
predictions by the model's identity, never by a folder name: two checkpoints both named `final`,
or a restarted `lwm serve` on another checkpoint behind the same URL, get predictions of their own.

The judge here stands in for a remote judge API (a hosted model, unreachable in tests): a local
HTTP server speaking the OpenAI chat API (tests/helpers/endpoints.py), reached through the openai
client exactly as a real judge would be. The model under test behind an endpoint is the same kind
of double; local checkpoints are tiny real models.
"""

import json
import shutil
import threading

import pytest
import torch
from omegaconf import OmegaConf

from eval.run import evaluate
from launch.stages import _stage_fn
from lwm.config import RlConfig
from lwm.endpoints.judge import parse_boxed, parse_rubric
from lwm.tracking import RunPaths
from rl.rewards import HybridReward, JudgeFailureError
from serve.server import WorldModelServer
from tests.conftest import DATA, make_cfg
from tests.helpers.endpoints import exact_judge, serve, stop

BENCH = DATA / "eval" / "bench"
TRUNCATED = '{"scores": {"format": 5, "factuality": '
THREES = ('<final_evaluation>{"scores": {"format": 3, "factuality": 3, "consistency": 3, "realism": 3, '
          '"quality": 3}}</final_evaluation>')

# Answers that are not a judgement: each must be a failed one, never a score.
NOT_A_JUDGEMENT = {
    "truncated JSON": TRUNCATED,
    "truncated in the block": "Looks fine.\n<final_evaluation>" + TRUNCATED,
    "block never closed and cut": '<final_evaluation>{"scores": {"format": 5, "factuality": 5, '
                                  '"consistency": 5, "realism": 5, "quality": 5',
    "fields missing": '<final_evaluation>{"scores": {"format": 5, "factuality": 4}}</final_evaluation>',
    "non-numeric": '<final_evaluation>{"scores": {"format": 5, "factuality": "good", "consistency": 5, '
                   '"realism": 5, "quality": 5}}</final_evaluation>',
    "empty reply": "",
    "prose": "format: 5, factuality: 5",
    # a complete example in the reasoning does not stand in for a final answer cut short
    "example then cut": 'e.g. <final_evaluation>{"scores": {"format": 5, "factuality": 5, "consistency": 5, '
                        '"realism": 5, "quality": 5}}</final_evaluation> so: <final_evaluation>{"scores": '
                        '{"format": 2, ',
}


@pytest.mark.parametrize("answer", NOT_A_JUDGEMENT.values(), ids=NOT_A_JUDGEMENT.keys())
def test_an_incomplete_answer_is_not_a_judgement(answer):
    assert parse_rubric(answer) is None


def test_complete_answers_parse():
    parsed = parse_rubric("Reasoning.\n" + THREES.replace('"quality": 3}', '"quality": 4}, "strengths": ["x"]'))
    assert parsed["total_score"] == pytest.approx(3.2) and parsed["strengths"] == ["x"]
    # untagged JSON as the whole final answer, and a fenced block inside the tags
    assert parse_rubric('{"scores": {"format": 1, "factuality": 1, "consistency": 1, "realism": 1, "quality": 1}}')
    assert parse_rubric('<final_evaluation>```json\n{"scores": {"format": 2, "factuality": 2, "consistency": 2, '
                        '"realism": 2, "quality": 2}}\n```</final_evaluation>')["total_score"] == 2.0
    # A/B: the final boxed answer decides; a last one that is not a side is no answer
    assert parse_boxed("\\boxed{A} on reflection \\boxed{B}") == "B"
    assert parse_boxed("\\boxed{A} on reflection \\boxed{C}") is None
    assert parse_boxed("so the answer is \\boxed{") is None
    assert parse_boxed("\\boxed{A} is tempting, but the final answer: \\boxed{") is None


# ---- RL: reward 0 for a failed judgement, and a stop when the judge keeps failing ----

REAL = "user@box:/work$ cat notes.txt\nbuy milk\nuser@box:/work$"
PROMPT = [{"role": "system", "content": "You simulate a terminal."},
          {"role": "user", "content": "### Turn 1\n**Action:**\n```json\n[{\"keystrokes\": \"cat notes.txt\\n\"}]\n```"}]


def truncating_judge(requests):
    return [TRUNCATED for _ in requests]


def reward(url: str, **rl) -> HybridReward:
    rcfg = OmegaConf.structured(RlConfig)
    rcfg.judge = OmegaConf.merge(rcfg.judge, {"base_url": url, "concurrency": 4, "max_retries": 0,
                                              "timeout_s": 5.0})
    for k, v in rl.items():
        setattr(rcfg, k, v)
    return HybridReward(rcfg)


def batch(r: HybridReward, n: int = 4) -> list[float]:
    """One batch of n completions, each new (the reward scores a repeated batch only once)."""
    r.batches = getattr(r, "batches", 0) + 1
    completions = [[{"role": "assistant", "content": f"<predicted_observation>\n{REAL}\n"
                     f"</predicted_observation><!-- {r.batches}.{i} -->"}] for i in range(n)]
    return r.total(completions, reference=[REAL] * n, domain=["terminal"] * n,
                   prompts=[PROMPT] * n, id=[f"s{i}" for i in range(n)])


def test_truncated_judge_reply_earns_no_rubric_reward():
    server = serve(truncating_judge)
    try:
        r = reward(server.url, judge_max_failure_rate=1.0)
        totals = batch(r)
    finally:
        stop(server)
    # Before: '{"format": 5, "factuality": ' parsed as total 5, rubric 1.0 (a reward hack).
    assert r._scores["rubric"] == [0.0] * 4
    assert totals == pytest.approx([0.1 * v for v in r._scores["rule"]])
    assert r.counts["judge_failed"] == 4 and r.counts["judged"] == 4


@pytest.mark.parametrize("judge", ["dead", "truncating"])
def test_rl_reward_stops_when_the_judge_fails_too_often(judge):
    server = serve(truncating_judge) if judge == "truncating" else None
    url = server.url if server else "http://127.0.0.1:9/v1"  # nothing listens on port 9
    try:
        r = reward(url, judge_max_failure_rate=0.5, judge_failure_window=8)
        batch(r)  # 4 failures in a window of 8 not yet full: the rate is not known yet
        with pytest.raises(JudgeFailureError) as err:
            batch(r)
        message = str(err.value)
        assert url in message and "100%" in message and "rl.judge_max_failure_rate" in message
        off = reward(url, judge_max_failure_rate=1.0, judge_failure_window=8)
        for _ in range(3):  # 1.0 turns the stop off: the failures are only counted
            batch(off)
        assert off.counts["judge_failed"] == 12
    finally:
        if server:
            stop(server)


def test_rl_reward_stops_as_soon_as_the_window_cannot_pass():
    """More failures than the threshold allows in a whole window: no need to wait for the rest."""
    r = reward("http://127.0.0.1:9/v1", judge_max_failure_rate=0.25, judge_failure_window=64)
    for _ in range(4):
        batch(r)  # 16 failures: exactly a quarter of 64, still allowed
    with pytest.raises(JudgeFailureError, match="20 of the last 20 judgements failed"):
        batch(r)


def test_rl_stage_with_a_dead_judge_fails_instead_of_training_on_rules(run_copy, sft_init):
    cfg = make_cfg(run_copy, "rl.max_steps=3", "rl.batch_size=4", "rl.num_generations=4",
                   "rl.max_completion_length=8", "rl.log_every=1", "rl.judge.base_url=http://127.0.0.1:9/v1",
                   "rl.judge.max_retries=0", "rl.judge_failure_window=4")
    cfg.rl.init = str(sft_init)
    with pytest.raises(JudgeFailureError, match="127.0.0.1:9"):
        _stage_fn("rl")(cfg, RunPaths(run_copy))
    assert not (run_copy / "rl" / "final" / "complete").exists()


def test_rl_shorter_than_the_failure_window_still_stops_on_a_dead_judge(run_copy, sft_init):
    """12 judgements, all failed, under the default window of 64: judged over what there was."""
    cfg = make_cfg(run_copy, "rl.max_steps=3", "rl.batch_size=4", "rl.num_generations=4",
                   "rl.max_completion_length=8", "rl.log_every=1", "rl.judge.base_url=http://127.0.0.1:9/v1",
                   "rl.judge.max_retries=0")
    cfg.rl.init = str(sft_init)
    assert cfg.rl.judge_failure_window > 12
    with pytest.raises(JudgeFailureError, match="127.0.0.1:9"):
        _stage_fn("rl")(cfg, RunPaths(run_copy))
    assert not (run_copy / "rl" / "final" / "complete").exists()


# ---- eval: failed judgements left out, counted and asked again ----

def model_under_test(requests):
    """Echoes the action's first line; the mcp samples' predictions carry a marker."""
    out = []
    for r in requests:
        user = r.messages[-1]["content"]
        body = ("MCP " if "\"arguments\"" in user else "") + user.splitlines()[0]
        out.append(f"<predicted_observation>\n{body}\n</predicted_observation>")
    return out


class SwitchableJudge:
    """Threes, or a reply cut after two fields while `truncate` says so (for all samples, or only
    for predictions containing `only`)."""

    def __init__(self, truncate: bool, only: str = ""):
        self.truncate, self.only, self.calls, self.lock = truncate, only, 0, threading.Lock()

    def __call__(self, requests):
        with self.lock:
            self.calls += len(requests)
        cut = lambda r: self.truncate and self.only in r.messages[-1]["content"]
        return [('<final_evaluation>{"scores": {"format": 5, "factuality": ' if cut(r) else THREES)
                for r in requests]


def judge_eval(run, judge_url, model_url):
    cfg = make_cfg(run, f"eval.input={BENCH}", "eval.max_samples=0", "eval.mode=judge",
                   f"eval.endpoint.base_url={model_url}", "eval.endpoint.model=double",
                   f"eval.judge.base_url={judge_url}", "eval.judge.max_retries=0",
                   "eval.controllability_samples=0", "eval.plots=false")
    return evaluate(cfg, RunPaths(run))["results"]["double"]


def test_eval_leaves_truncated_judgements_out_and_retries_them(tmp_path):
    judge = SwitchableJudge(truncate=True, only="MCP ")
    servers = [serve(judge), serve(model_under_test)]
    try:
        first = judge_eval(tmp_path, servers[0].url, servers[1].url)["judge"]
        # Before: the two cut mcp answers parsed as total 5 and lifted the headline to 100 for mcp.
        assert first["failed"] == 2 and first["valid"] == 3
        assert first["micro"] == pytest.approx(50.0) and first["domains"]["mcp"]["total_score"] is None
        assert "| 3 | 2 |" in (tmp_path / "eval" / "report.md").read_text()  # valid, failed
        calls = judge.calls
        judge.truncate = False  # the judge recovers: a rerun asks only what failed
        again = judge_eval(tmp_path, servers[0].url, servers[1].url)["judge"]
        assert judge.calls - calls == 2 and again["failed"] == 0 and again["micro"] == pytest.approx(50.0)
        calls = judge.calls
        judge_eval(tmp_path, servers[0].url, servers[1].url)
        assert judge.calls == calls  # valid judgements are final
    finally:
        for s in servers:
            stop(s)


# ---- eval: predictions cached by identity ----

def tiny_checkpoint(prepared_run, out, newlines: bool):
    """A tiny random model. Untrained, it repeats the prompt's last token (a newline); without
    `newlines`, the token Z scores twice what a newline does and is written instead."""
    from lwm.models.hf import build_model
    from lwm.tokenizer import load_tokenizer
    tok = load_tokenizer(prepared_run / "prepare" / "tokenizer")
    torch.manual_seed(0)
    model = build_model(make_cfg(prepared_run).model, len(tok), tok)
    if not newlines:
        with torch.no_grad():
            weight = model.get_output_embeddings().weight
            (nl,), (z,) = tok.encode("\n", add_special_tokens=False), tok.encode("Z", add_special_tokens=False)
            weight[z] = 2 * weight[nl]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def rule_eval(run, checkpoint):
    cfg = make_cfg(run, f"eval.checkpoint={checkpoint}", "eval.max_samples=4", "eval.max_new_tokens=8",
                   "eval.batch_size=4", "eval.controllability_samples=0", "eval.plots=false")
    (result,) = evaluate(cfg, RunPaths(run))["results"].values()
    return result


def with_eval_set(prepared_run, run):
    (run / "prepare").mkdir(parents=True)
    (run / "prepare" / "eval").symlink_to(prepared_run / "prepare" / "eval")
    return run


def test_two_checkpoints_named_final_get_their_own_predictions(prepared_run, tmp_path, monkeypatch):
    run = with_eval_set(prepared_run, tmp_path / "run")
    sft = tiny_checkpoint(prepared_run, run / "sft" / "final", newlines=True)
    rl = tiny_checkpoint(prepared_run, run / "rl" / "final", newlines=False)
    sft_result = rule_eval(run, sft)
    rl_result = rule_eval(run, rl)  # before: the SFT predictions, reused under the name `final`
    alone = rule_eval(with_eval_set(prepared_run, tmp_path / "alone"), rl)
    assert rl_result["overall"] == alone["overall"] and rl_result["overall"] != sft_result["overall"]
    assert rl_result["identity"] != sft_result["identity"]
    # Other runs' models under one name (both `rl_final` here): each keeps its own answers, and
    # a model evaluated before is not asked again.
    a = shutil.copytree(sft, tmp_path / "a" / "rl" / "final")
    b = shutil.copytree(rl, tmp_path / "b" / "rl" / "final")
    assert rule_eval(run, a)["overall"] == sft_result["overall"]
    assert rule_eval(run, b)["overall"] == rl_result["overall"]
    import lwm.models.hf

    def no_generation(*args, **kwargs):
        raise AssertionError("the answers of a model evaluated before are asked again")
    monkeypatch.setattr(lwm.models.hf, "load_model", no_generation)
    again = rule_eval(run, a)
    assert again["overall"] == sft_result["overall"] and again["identity"] == sft_result["identity"]


def scripted(tag: str):
    return lambda requests: [f"<predicted_observation>\n{tag} {r.messages[-1]['content'][:40]}\n"
                             "</predicted_observation>" for r in requests]


def test_restarted_server_on_another_checkpoint_is_detected(tmp_path):
    first = WorldModelServer(scripted("A"), port=0, model_name="wm", fingerprint="aaaa")
    threading.Thread(target=first.serve_forever, daemon=True).start()
    port = first.server_address[1]
    cfg = make_cfg(tmp_path, f"eval.input={BENCH}", "eval.max_samples=0",
                   f"eval.endpoint.base_url={first.url}", "eval.endpoint.model=wm",
                   "eval.controllability_samples=0", "eval.plots=false")
    try:
        before = evaluate(cfg, RunPaths(tmp_path))["results"]["wm"]
    finally:
        stop(first)
    calls = []
    backend = scripted("B")
    second = WorldModelServer(lambda reqs: calls.append(len(reqs)) or backend(reqs), port=port,
                              model_name="wm", fingerprint="bbbb")  # same URL, same name
    threading.Thread(target=second.serve_forever, daemon=True).start()
    try:
        after = evaluate(cfg, RunPaths(tmp_path))["results"]["wm"]
    finally:
        stop(second)
    assert sum(calls) == 5 and after["identity"] != before["identity"]  # before: 0 requests
    preds = [json.loads(l) for l in (tmp_path / "eval" / "wm" / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["prediction"].startswith("<predicted_observation>\nB ") for p in preds)


# ---- SFT teacher: a failed judgement of a cached candidate is asked again ----

def test_teacher_candidates_with_failed_judgements_are_judged_again(run_copy):
    import datasets
    from sft.teacher import reasoning_targets
    rows = list(datasets.Dataset.from_parquet(RunPaths(run_copy).shards("sft")))[:2]
    teacher = serve(lambda reqs: ["<think>why</think><predicted_observation>\nx\n</predicted_observation>"
                                  for _ in reqs])
    judge = SwitchableJudge(truncate=True)
    judge_server = serve(judge)
    try:
        cfg = make_cfg(run_copy, f"sft.teacher.base_url={teacher.url}", "sft.teacher.samples=2",
                       f"sft.teacher.judge.base_url={judge_server.url}", "sft.teacher.judge.max_retries=0",
                       "sft.teacher.threshold=0.0")
        _, stats = reasoning_targets(cfg.sft.teacher, rows, run_copy / "t", 0)
        assert stats["judge_failed"] == 4
        judge.truncate = False
        _, stats = reasoning_targets(cfg.sft.teacher, rows, run_copy / "t", 0)
        assert stats["asked"] == 0 and stats["rejudged"] == 4 and stats["judge_failed"] == 0
        cached = [json.loads(l) for l in (run_copy / "t" / "candidates.jsonl").read_text().splitlines()]
        assert [c["rubric"] for rec in cached for c in rec["candidates"]] == [0.5] * 4
    finally:
        stop(teacher)
        stop(judge_server)


def test_exact_judge_double_still_parses():
    """The shared double answers in the strict format (other tests rely on it)."""
    class R:
        messages = [{"role": "user", "content": "**World Model Output (Simulated):**\n```\nx\n```\n"
                     "**Ground Truth (Real Output):**\n```\nx\n```"}]
    assert parse_rubric(exact_judge([R()])[0])["total_score"] == 5.0


def test_teacher_cache_follows_the_checkpoint_not_its_path(run_copy, tmp_path):
    """Other weights saved where the teacher was: its cached replies are not reused."""
    import datasets
    from sft.teacher import reasoning_targets
    rows = list(datasets.Dataset.from_parquet(RunPaths(run_copy).shards("sft")))[:2]
    path = tiny_checkpoint(run_copy, tmp_path / "teacher", newlines=True)
    cfg = make_cfg(run_copy, f"sft.teacher.path={path}", "sft.teacher.samples=1", "sft.teacher.max_tokens=4")
    assert reasoning_targets(cfg.sft.teacher, rows, tmp_path / "cache", 0, cfg.model)[1]["asked"] == 2
    assert reasoning_targets(cfg.sft.teacher, rows, tmp_path / "cache", 0, cfg.model)[1]["asked"] == 0
    shutil.rmtree(path)
    tiny_checkpoint(run_copy, path, newlines=False)  # before: the old teacher's replies, reused
    assert reasoning_targets(cfg.sft.teacher, rows, tmp_path / "cache", 0, cfg.model)[1]["asked"] == 2
