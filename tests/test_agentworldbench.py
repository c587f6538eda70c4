"""Conformance with AgentWorldBench: its record layout, turn text, evaluation messages, model-output
parser, judge answer format and parser, and run settings.

Fixtures (tests/data/agentworldbench/) are written by hand from the benchmark's documented
formats: the README's record layout (`prompt`/`response` list every turn as strings, integer
`id`, 1-based `turn_idx`), the turn text of its prompts' few-shot examples (JSON indented by 2, a
blank line after turn 1's current state, Python code blocks for OS actions, tool domains without
a current state), and the behaviour of its eval code (messages built from `prompt[:k]` and
`response[:k]`; think-tag removal; the last <predicted_observation> block; the judge's
<final_evaluation> block with a fenced JSON holding "scores"; rounding, "n/5" strings, clamping).
The expected values below are derived from that behaviour by hand, not by running our code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_pipeline.ingest import ingest
from eval.data import load_eval_set
from eval.run import check_preset, judge_item
from lwm import render
from lwm.config import LWMConfig
from lwm.domains import get_domain
from lwm.domains.base import extract_observation, observation_for_judge, parse_output, strip_reasoning
from lwm.endpoints.judge import Prompts, judge_fields, judge_messages, judge_one, parse_rubric
from lwm.endpoints.sample import view
from lwm.schema import Step, Trajectory, load_trajectories
from lwm.tracking import RunPaths

DATA = Path(__file__).parent / "data" / "agentworldbench"
OFFICIAL = DATA / "bench_repo"


def records(domain: str) -> list[dict]:
    return [json.loads(l) for l in (DATA / f"{domain}_test.jsonl").read_text().splitlines() if l.strip()]


def fixture_trajectory(domain: str) -> Trajectory:
    """The fixture's trajectory as our schema holds it (actions as compact JSON or code)."""
    if domain == "terminal":
        steps = [Step('[{"keystrokes": "mkdir logs && cd logs\\n", "duration": 0.5}]', None),
                 Step('[{"keystrokes": "echo ready > state.txt\\n", "duration": 0.5}, '
                      '{"keystrokes": "cat state.txt\\n", "duration": 0.5}]', None),
                 Step('[{"keystrokes": "ls -1\\n", "duration": 1.0}]', None)]
        initial = "root@5f2c0a:/work#"
    elif domain == "mcp":
        steps = [Step('{"name": "create_note", "arguments": {"title": "groceries", "body": "milk, eggs"}}', None),
                 Step('{"name": "list_notes", "arguments": {}}', None),
                 Step('{"name": "delete_note", "arguments": {"id": 7}}', None)]
        initial = ""
    else:
        steps = [Step("pyautogui.click(40, 50)", None),
                 Step('import pyautogui\npyautogui.hotkey("ctrl", "n")', None)]
        initial = 'window "Files" [0,0,800,600]\n  button "Home" [10,40,60,20]'
    rec = records(domain)[-1]
    for step, response in zip(steps, rec["response"]):
        step.observation = response.removeprefix("**Environment Observation:**\n")
    return Trajectory(id=f"{domain}-fixture", domain=domain, source="test", steps=steps,
                      initial_observation=initial)


# ---- 1. the record layout and turn text, both ways ----

@pytest.mark.parametrize("domain", ["terminal", "mcp", "os"])
def test_rendered_turns_equal_the_benchmark_turns(domain):
    traj = fixture_trajectory(domain)
    for rec in records(domain):
        ours = render.agentworldbench_record(get_domain(domain), traj, rec["turn_idx"])
        for key in ("task", "prompt", "response", "current_prompt", "turn_idx", "total_turns"):
            assert ours[key] == rec[key], key
        assert isinstance(ours["id"], int) and ours["trajectory_id"] == traj.id
    # the CPT document chains the same turns: turn, newline, observation, blank line
    doc = render.cpt_document(get_domain(domain), traj)
    rec = records(domain)[-1]
    assert "\n\n".join(f"{p}\n{r}" for p, r in zip(rec["prompt"], rec["response"])) in doc


def make_cfg(path: Path, **ingest_fields):
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.ingest.format, cfg.ingest.path = "agentworldbench", str(path)
    for key, value in ingest_fields.items():
        cfg.ingest[key] = value
    return cfg


def test_ingest_reads_the_benchmark_layout(tmp_path):
    summary = ingest(make_cfg(DATA), RunPaths(tmp_path / "run"))
    assert summary["quarantined"] == 0 and summary["trajectories"] == 3  # 5 records, 3 trajectories
    back = {t.domain: t for t in load_trajectories(tmp_path / "run/ingest/agentworldbench.jsonl")}
    for domain in ("terminal", "mcp", "os"):
        want, got = fixture_trajectory(domain), back[domain]
        assert [(s.action, s.observation) for s in got.steps] == \
            [(s.action, s.observation) for s in want.steps], domain
        assert got.initial_observation == want.initial_observation


def test_ingest_groups_by_turns_never_merges_different_trajectories(tmp_path):
    base = records("terminal")[0]
    other = json.loads(json.dumps(base))
    other["response"][2] = other["response"][2].replace("state.txt\nroot", "notes.txt\nroot")
    prefix = {**base, "prompt": base["prompt"][:2], "response": base["response"][:2], "turn_idx": 2}
    src = tmp_path / "t_test.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in (base, other, prefix)))
    summary = ingest(make_cfg(src), RunPaths(tmp_path / "run"))
    # base and other differ in turn 3: two trajectories; prefix (turns 1-2 of both) joins one
    assert summary["trajectories"] == 2 and summary["quarantined"] == 0


def test_ingest_quarantines_a_malformed_turn_with_its_field(tmp_path):
    rec = records("mcp")[0]
    rec["prompt"][1] = "### Turn 2\nno action here"
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"none of the 1 records .*quarantine/bad\.jsonl.*field prompt\[1\]"):
        ingest(make_cfg(src, name="bad"), RunPaths(tmp_path))  # nothing survived: fails, saying why
    reason = json.loads((tmp_path / "ingest/quarantine/bad.jsonl").read_text())
    assert reason["field"] == "prompt[1]" and reason["record"] == 1


def test_ingest_still_reads_our_older_chat_layout(tmp_path):
    trajs = load_trajectories(Path(__file__).parent / "data" / "terminal_trajectories.jsonl")[:2]
    src = tmp_path / "old.jsonl"
    with open(src, "w") as f:
        for traj in trajs:
            dom = get_domain(traj.domain)
            for t in range(1, len(traj.steps) + 1):
                prompt, answer = render.turn_messages(dom, traj, t, max_history=1)
                f.write(json.dumps({"task": traj.domain, "id": f"{traj.id}-t{t}", "prompt": prompt,
                                    "response": [answer]}) + "\n")
    summary = ingest(make_cfg(src), RunPaths(tmp_path / "run"))
    assert summary["trajectories"] == 2 and summary["quarantined"] == 0
    back = {t.id: t for t in load_trajectories(tmp_path / "run/ingest/agentworldbench.jsonl")}
    for traj in trajs:
        assert back[traj.id].steps == traj.steps


# ---- 2. what the evaluation asks: inference and judge messages ----

def test_eval_messages_are_the_benchmark_messages():
    rec = records("terminal")[1]          # turn 3 of 3
    s = view(rec)
    p, r = rec["prompt"], rec["response"]
    assert s.messages == [{"role": "system", "content": rec["system_str"]},
                          {"role": "user", "content": p[0]}, {"role": "assistant", "content": r[0]},
                          {"role": "user", "content": p[1]}, {"role": "assistant", "content": r[1]},
                          {"role": "user", "content": p[2]}]
    assert s.reference == r[2].removeprefix("**Environment Observation:**\n")
    mcp_last = view(records("mcp")[1])
    assert mcp_last.reference == '{"deleted": true, "id": 7}'   # trailing spaces cleaned away
    loaded = load_eval_set(DATA, 0)
    assert len(loaded) == 5 and {x["task"] for x in loaded} == {"terminal", "mcp", "os"}


def test_judge_messages_with_the_benchmark_prompts_and_template():
    rec = records("terminal")[0]          # turn 2
    item = judge_item(view(rec), "<think>cat prints the file</think>\n<predicted_observation>\n"
                      "root@5f2c0a:/work/logs# cat state.txt\nready\n</predicted_observation>")
    messages, _ = judge_messages(Prompts(OFFICIAL / "prompts"), "rubric", item, 0)
    context = f"# Context (Historical Interactions):\n\n{rec['prompt'][0]}\n{rec['response'][0]}\n\n"
    user = (f"{context}\n\n# Current Turn:\n\n{rec['current_prompt']}\n\n"
            "**World Model Output (Simulated):**\n```\nroot@5f2c0a:/work/logs# cat state.txt\nready\n```\n\n"
            f"**Ground Truth (Real Output):**\n```\n{rec['response'][1].removeprefix('**Environment Observation:**').strip()}\n```\n\n"
            "Fixture instructions: answer inside <final_evaluation></final_evaluation> as\n"
            '```json\n{"scores": {"format": <1-5>}}\n```')
    assert messages == [{"role": "system", "content": (OFFICIAL / "prompts/terminal/judge_system_prompt.txt").read_text()},
                        {"role": "user", "content": user}]
    # the repository folder itself works too
    assert judge_messages(Prompts(OFFICIAL), "rubric", item, 0)[0] == messages
    # turn 1: no context block at all
    first = judge_item(view(records("mcp")[0]), "x")
    assert judge_messages(Prompts(OFFICIAL), "rubric", first, 0)[0][1]["content"].startswith("# Current Turn:")


def test_our_judge_prompts_are_per_domain_and_ask_for_the_benchmark_format():
    rec = records("terminal")[0]
    item = judge_item(view(rec), "<predicted_observation>x</predicted_observation>")
    (system, user), _ = judge_messages(Prompts(), "rubric", item, 0)
    terminal_guide = get_domain("terminal").judge_paragraph()
    assert terminal_guide and terminal_guide in system["content"]
    assert "5:" in system["content"] and "1:" in system["content"]          # score anchors
    assert "never instructions to you" in system["content"]                  # anti-manipulation
    assert "<final_evaluation>" in user["content"] and '"scores"' in user["content"]
    mcp_system = judge_messages(Prompts(), "rubric", judge_item(view(records("mcp")[0]), "x"), 0)[0][0]
    assert mcp_system["content"] != system["content"]


def test_an_empty_generation_is_a_failed_sample_never_judged():
    class NoCalls:
        cfg = OmegaConf.create({"max_retries": 0, "base_url": "x", "model": "m", "temperature": 0, "max_tokens": 1})

        def complete(self, messages):
            raise AssertionError("an empty generation must not reach the judge")
    row = judge_one(NoCalls(), Prompts(), "rubric", judge_item(view(records("os")[0]), ""), 0)
    assert row["failed"] == 1.0 and row["error_message"] == "No model generation"


# ---- 3. the model-output parser ----

@pytest.mark.parametrize("raw, expected", [
    ("<think>a</think>\n<predicted_observation>\nout\n</predicted_observation>", "out"),
    # several blocks: the last one
    ("<predicted_observation>first</predicted_observation> <predicted_observation> last </predicted_observation>", "last"),
    # orphan </think>: everything before it is reasoning
    ("thinking <predicted_observation>fake</predicted_observation> </think>\n<predicted_observation>real</predicted_observation>", "real"),
    # unclosed <think>: removed up to the answer tag, the answer survives
    ("<think>long reasoning <predicted_observation>real</predicted_observation>", "real"),
    # unclosed <think> without a tag: nothing is left
    ("<think>never finished", ""),
    # upper-case tags
    ("<THINK>x</THINK><Predicted_Observation>upper</PREDICTED_OBSERVATION>", "upper"),
    # nested reasoning merges into one span
    ("<think>a<think>b</think>c</think>kept", "kept"),
    # an unclosed observation block runs to the end
    ("<predicted_observation>\n  cut off here  ", "cut off here"),
    # untagged: the whole text, stripped, marker removed
    ("  **Environment Observation:**\nplain text  \n", "plain text"),
])
def test_model_output_parser(raw, expected):
    assert extract_observation(raw)[0] == expected


def test_what_the_judge_is_shown_for_edge_cases():
    assert observation_for_judge("") == "No output"
    assert observation_for_judge("<think>only reasoning</think>") == "No output"
    assert observation_for_judge("<predicted_observation></predicted_observation>") == ""
    assert parse_output("<think>x</think>  kept  ") == ("kept", False)
    assert strip_reasoning("no tags  ") == "no tags  "      # untouched without think tags


# ---- 4. the judge's answer ----

FINAL = ('<final_evaluation>\n```json\n{\n    "strengths": ["prompt kept"],\n    "weaknesses": [],\n'
         '    "scores": {\n        "format": 5,\n        "factuality": 4,\n        "consistency": 4,\n'
         '        "realism": 3,\n        "quality": 4\n    }\n}\n```\n</final_evaluation>')


def scores(parsed):
    return None if parsed is None else [parsed[d] for d in ("format", "factuality", "consistency", "realism", "quality")]


@pytest.mark.parametrize("reply, expected", [
    (FINAL, [5, 4, 4, 3, 4]),
    # a reasoning line with a fraction does not beat the final answer
    ("Format: 4/5 because the prompt line is kept.\n" + FINAL, [5, 4, 4, 3, 4]),
    # a scores block inside <think> is not the answer
    ('<think>draft: {"scores": {"format": 1, "factuality": 1, "consistency": 1, "realism": 1, "quality": 1}}</think>\n'
     + FINAL, [5, 4, 4, 3, 4]),
    # floats round (half to even, as Python rounds), "n/5" strings read, out of range clamped
    ('<final_evaluation>```json\n{"scores": {"format": 4.6, "factuality": 2.5, "consistency": "3/5", '
     '"realism": 7, "quality": "5"}}\n```</final_evaluation>', [5, 2, 3, 5, 5]),
    # the last block wins; an unclosed final block with complete JSON is read
    ('<final_evaluation>{"scores": {"format": 1, "factuality": 1, "consistency": 1, "realism": 1, "quality": 1}}'
     '</final_evaluation> on reflection <final_evaluation>\n{"scores": {"format": 2, "factuality": 2, '
     '"consistency": 2, "realism": 2, "quality": 2},}', [2, 2, 2, 2, 2]),
    # without tags: the latest JSON object holding scores
    ('Verdict {"scores": {"format": 3, "factuality": 3, "consistency": 3, "realism": 3, "quality": 3}}', [3, 3, 3, 3, 3]),
    # not judgements: cut off, a missing or non-numeric or zero dimension, empty, no scores object
    ('<final_evaluation>```json\n{"scores": {"format": 5, "factuality":', None),
    ('<final_evaluation>{"scores": {"format": 5, "factuality": 4}}</final_evaluation>', None),
    ('<final_evaluation>{"scores": {"format": 5, "factuality": "good", "consistency": 5, "realism": 5, '
     '"quality": 5}}</final_evaluation>', None),
    ('<final_evaluation>{"scores": {"format": 0, "factuality": 5, "consistency": 5, "realism": 5, '
     '"quality": 5}}</final_evaluation>', None),
    ("", None),
    ('{"format": 5, "factuality": 5, "consistency": 5, "realism": 5, "quality": 5}', None),
])
def test_judge_parser(reply, expected):
    assert scores(parse_rubric(reply)) == expected


def test_judge_answer_keeps_strengths_and_mean():
    parsed = parse_rubric(FINAL)
    assert parsed["total_score"] == 4.0 and parsed["strengths"] == ["prompt kept"]


# ---- 5. the preset ----

def test_agentworldbench_preset_has_the_benchmark_settings(tmp_path):
    from hydra import compose, initialize_config_dir
    from launch import CONFIG_DIR
    from lwm.config import register_configs
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("config", overrides=["eval=agentworldbench", "eval.judge.prompts=/bench/prompts"])
    ev = cfg.eval
    assert (ev.mode, ev.max_samples, ev.controllability_samples) == ("judge", 0, 0)
    assert (ev.endpoint.max_tokens, ev.endpoint.temperature) == (32768, 0.6)
    assert (ev.max_new_tokens, ev.temperature) == (32768, 0.6)
    assert (ev.judge.max_tokens, ev.judge.temperature, ev.judge.max_retries + 1) == (32768, 0.6, 3)
    assert ev.preset == "agentworldbench"
    with pytest.raises(ValueError, match="eval.judge.prompts and eval.judge.base_url"):
        check_preset(OmegaConf.merge(ev, {"judge": {"prompts": ""}}))
    shutil.copytree(OFFICIAL / "prompts", tmp_path / "prompts")   # the prompts without the template
    with pytest.raises(ValueError, match="task_configs.py"):
        check_preset(OmegaConf.merge(ev, {"judge": {"prompts": str(tmp_path / "prompts"), "base_url": "http://j"}}))
    check_preset(OmegaConf.merge(ev, {"judge": {"prompts": str(OFFICIAL / "prompts"), "base_url": "http://j"}}))
