"""Every stage is scored on what it trained on: CPT models in the CPT document's own rendering,
SFT/RL models in chat, prompts no longer than the stage trained at; the stage table carries
per-domain counts and bootstrap intervals; RL reports whether its reward could move the policy."""

import json
import shutil

import pytest

from eval.generate import encode_sample, prompt_format, prompt_limit, reply
from eval.report import gains, gains_table, intervals, table
from eval.run import evaluate
from lwm import render
from lwm.domains import domain_names, get_domain
from lwm.endpoints.sample import view
from lwm.schema import Step, Trajectory
from lwm.tokenizer import load_tokenizer
from lwm.tracking import RunPaths
from tests.conftest import make_cfg
from tests.helpers.checkpoint import save_tiny_checkpoint


def _trajectory(name: str) -> Trajectory:
    """Three turns of a domain, from its demo actions, with tools where it is a tool domain."""
    dom = get_domain(name)
    actions = list(dom.demo_actions) * 3 or ["act"] * 3
    tools = [{"name": "list_directory", "description": "list", "parameters": {"type": "object"}}] \
        if dom.kind == "tool" else []
    return Trajectory(id=f"{name}-1", domain=name, source="test", task="find the file", tools=tools,
                      initial_observation="start screen" if dom.shows_state() else "",
                      steps=[Step(a, f"observation {i} of {name}\nline two") for i, a in enumerate(actions[:3])])


@pytest.mark.parametrize("name", domain_names())
def test_document_prompt_is_a_prefix_of_the_cpt_document(name):
    """The cause of CPT's zeros: eval asked a model that had seen only CPT documents in ChatML
    with another system prompt. The document prompt of every eval sample is the trajectory's CPT
    document up to the observation, whose continuation ends where the document's next turn
    starts (or the document ends)."""
    dom, traj = get_domain(name), _trajectory(name)
    document = render.cpt_document(dom, traj)
    assert document.startswith(dom.system_prompt(traj, render.CPT_VARIANT))
    for t in range(1, len(traj.steps) + 1):
        sample = view(render.agentworldbench_record(dom, traj, t))
        prompt = render.document_prompt(dom, sample.messages)
        observation = traj.steps[t - 1].observation
        assert document.startswith(prompt + observation), (name, t)
        rest = document[len(prompt):]
        assert render.document_observation(rest) == ((observation, True) if t < len(traj.steps)
                                                     else (observation, False))


def test_stage_models_are_asked_in_their_format_within_their_trained_length(prepared_run):
    cfg = make_cfg(prepared_run, "eval.max_new_tokens=16")
    assert [prompt_format(cfg.eval, s) for s in ("init", "cpt", "sft", "rl", None)] == \
        ["document", "document", "chat", "chat", "chat"]
    cfg.eval.prompt_format = "chat"
    assert prompt_format(cfg.eval, "cpt") == "chat"
    assert prompt_limit(cfg, "document", "cpt", 4096) == cfg.data.seq_len - 16
    assert prompt_limit(cfg, "chat", "sft", 4096) == cfg.sft.max_length - 16
    assert prompt_limit(cfg, "chat", None, 4096) == 4096 - 16       # a model from elsewhere
    cfg.eval.max_prompt_tokens = 100
    assert prompt_limit(cfg, "document", "cpt", 4096) == 100
    tok = load_tokenizer(prepared_run / "prepare" / "tokenizer")
    sample = view(json.loads((prepared_run / "prepare" / "eval" / "terminal_test.jsonl").read_text()
                             .splitlines()[-1]))
    whole = encode_sample(tok, sample, "document", 1 << 30)
    assert tok.decode(whole).endswith(render.HISTORY_OBS + "\n")
    assert encode_sample(tok, sample, "document", 50) == whole[-50:]     # a window, as CPT packs
    assert len(encode_sample(tok, sample, "chat", 300)) <= 300


def test_a_document_continuation_is_scored_in_its_own_format(prepared_run):
    tok = load_tokenizer(prepared_run / "prepare" / "tokenizer")
    ended = tok.encode("total 0\n\n### Turn 4\n**Action:**", add_special_tokens=False)
    assert reply(tok, ended, "document")[0] == render.target("total 0")
    at_eos = tok.encode("total 0", add_special_tokens=False) + [tok.eos_token_id]
    assert reply(tok, at_eos, "document")[0] == render.target("total 0")
    cut = tok.encode("total 0", add_special_tokens=False)       # ran out of tokens: not closed
    assert reply(tok, cut, "document") == ("total 0", {"continuation": "total 0", "ended": False})
    assert reply(tok, cut, "chat") == ("total 0", {})


def test_intervals_and_paired_gains():
    before = [(f"t{i}", "terminal", float(i % 5)) for i in range(20)] + \
        [(f"w{i}", "web", float(i % 3)) for i in range(10)]
    after = [(i, d, v + 5.0) for i, d, v in before]
    ci = intervals(before, 1000, seed=0)
    assert ci == intervals(before, 1000, seed=0)                    # seeded
    assert ci["samples"] == {"terminal": 20, "web": 10}
    lo, hi = ci["domains"]["terminal"]
    assert lo < 2.0 < hi and ci["macro"][0] < (2.0 + 1.0) / 2 < ci["macro"][1]
    steps = gains({"sft": before, "rl": after}, 1000, seed=0)
    assert steps["rl - sft"]["domains"] == {"terminal": 5.0, "web": 5.0}
    assert steps["rl - sft"]["ci"]["web"] == pytest.approx([5.0, 5.0])  # paired: the same samples
    assert "| rl - sft | +5.00 [+5.00, +5.00] |" in gains_table(steps)
    results = {"sft": {"mode": "rule", "domains": {"terminal": {"score": 0.02}, "web": {"score": 0.01}},
                       "micro": 0.0167, "macro": 0.015, "ci": ci}}
    shown = table(results)
    assert "| samples (n) | 20 | 10 | 30 | 30 |" in shown and "2.00 [" in shown


def test_stage_table_reports_formats_counts_and_gains(prepared_run, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "prepare").mkdir(parents=True)
    (run / "prepare" / "eval").symlink_to(prepared_run / "prepare" / "eval")
    ckpt = save_tiny_checkpoint(prepared_run, tmp_path / "ckpt")
    for stage in ("init", "cpt", "sft"):
        shutil.copytree(ckpt, run / stage / "final")
    cfg = make_cfg(run, "eval.compare_stages=true", "eval.max_samples=4", "eval.max_new_tokens=8",
                   "eval.batch_size=4", "eval.controllability_samples=0", "eval.plots=false",
                   "eval.bootstrap=200")
    summary = evaluate(cfg, RunPaths(run))
    results = summary["results"]
    assert {n: r["asked"]["format"] for n, r in results.items()} == \
        {"init": "document", "cpt": "document", "sft": "chat"}
    assert results["cpt"]["asked"]["limit"] == cfg.data.seq_len - 8
    assert results["init"]["ci"]["samples"] == {"terminal": 4} and "macro" in results["init"]["ci"]
    assert set(summary["gains"]) == {"cpt - init", "sft - cpt"}
    assert 0.0 <= results["cpt"]["empty"] <= 1.0
    rows = [json.loads(l) for l in (run / "eval" / "cpt" / "scored.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"id", "score", "format", "empty"} <= set(rows[0])
    preds = [json.loads(l) for l in (run / "eval" / "cpt" / "predictions.jsonl").read_text().splitlines()]
    assert all("continuation" in p for p in preds)
    report = (run / "eval" / "report.md").read_text()
    assert "| samples (n) | 4 |" in report and "Stage gains" in report and "cpt: document" in report
    assert "Stage gains" in capsys.readouterr().out
    # asked again in another format: the rows of the earlier format are not reused
    again = evaluate(make_cfg(run, "eval.compare_stages=true", "eval.max_samples=4", "eval.max_new_tokens=8",
                              "eval.batch_size=4", "eval.controllability_samples=0", "eval.plots=false",
                              "eval.prompt_format=chat"), RunPaths(run))
    assert again["results"]["cpt"]["asked"]["format"] == "chat"
    preds = [json.loads(l) for l in (run / "eval" / "cpt" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and "continuation" not in preds[-1]


def test_data_all_sets_the_stage_defaults_it_documents(tmp_path):
    cfg = make_cfg(tmp_path, "data=all")
    assert cfg.data.domains == ["terminal", "swe", "search", "mcp", "web", "os"]
    assert (cfg.cpt.max_steps, cfg.sft.max_length, cfg.eval.max_samples) == (240, 2048, 32)
    # RL is asked every prompt SFT trained on (at 1024 mcp's and web's were left out)
    assert cfg.rl.max_prompt_length + cfg.rl.max_completion_length == cfg.sft.max_length
    assert cfg.rl.max_completion_length == cfg.eval.max_new_tokens
    assert cfg.rl.keep_best and cfg.rl.validation_prompts == 18    # 3 per domain held out of RL
    assert make_cfg(tmp_path, "data=all", "cpt.max_steps=5").cpt.max_steps == 5   # the command line wins
    assert make_cfg(tmp_path).cpt.max_steps == 150                                # other data: untouched


def test_rl_reports_reward_spread_and_policy_change(run_copy, sft_init):
    from launch.stages import _stage_fn
    cfg = make_cfg(run_copy, "rl.max_steps=2", "rl.batch_size=4", "rl.num_generations=4",
                   "rl.max_completion_length=8", "rl.log_every=1", "rl.lr=1e-3")
    cfg.rl.init = str(sft_init)
    summary = _stage_fn("rl")(cfg, RunPaths(run_copy))
    steps = json.loads((run_copy / "rl" / "metrics.json").read_text())["per_step"]
    assert len(steps) == 2
    for s in steps:
        assert 0.0 <= s["frac_reward_zero_std"] <= 1.0 and s["policy_change"] > 0.0
    assert summary["frac_reward_zero_std_mean"] is not None and summary["policy_change_mean"] > 0.0
