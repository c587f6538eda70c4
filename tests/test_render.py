import json

from lwm import render
from lwm.domains import OBS_CLOSE, OBS_OPEN, domain_names, extract_observation, get_domain
from lwm.schema import load_trajectories
from tests.conftest import TRAJECTORIES


def _traj():
    return next(t for t in load_trajectories(TRAJECTORIES) if len(t.steps) >= 3)


def test_turns_follow_agentworldbench_layout():
    traj, dom = _traj(), get_domain("terminal")
    messages, target = render.turn_messages(dom, traj, 3)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    first, second, last = messages[1]["content"], messages[3]["content"], messages[5]["content"]
    assert first.startswith("### Turn 1\n**Current State:**\n" + traj.initial_observation)
    assert second.startswith("### Turn 2\n**Action:**\n```json\n") and "**Current State:**" not in second
    assert last.startswith("### Turn 3\n**Action:**\n```json\n") and last.endswith("\n```")
    action_json = last.split("```json\n")[1].rsplit("\n```", 1)[0]
    assert json.loads(action_json) == json.loads(traj.steps[2].action)
    assert messages[2]["content"] == "**Environment Observation:**\n" + traj.steps[0].observation
    assert target["content"] == f"{OBS_OPEN}\n{traj.steps[2].observation}\n{OBS_CLOSE}"


def test_history_window_keeps_latest_turns():
    traj, dom = _traj(), get_domain("terminal")
    messages, _ = render.turn_messages(dom, traj, 3, max_history=1)
    assert [m["content"].split("\n")[0] for m in messages[1::2]] == ["### Turn 2", "### Turn 3"]


def test_eval_record_fields():
    traj, dom = _traj(), get_domain("terminal")
    rec = render.agentworldbench_record(dom, traj, 2)
    assert set(rec) == {"task", "id", "prompt", "response", "current_prompt", "system_str",
                        "turn_idx", "total_turns", "trajectory_id"}
    messages, _ = render.turn_messages(dom, traj, 2)
    assert rec["current_prompt"] == rec["prompt"][1] == messages[-1]["content"]
    assert rec["system_str"] == messages[0]["content"]
    assert len(rec["prompt"]) == len(rec["response"]) == len(traj.steps)   # the whole trajectory
    assert isinstance(rec["id"], int) and rec["id"] != render.agentworldbench_record(dom, traj, 1)["id"]
    assert (rec["turn_idx"], rec["total_turns"], rec["task"]) == (2, len(traj.steps), "terminal")


def test_extraction_ignores_reasoning():
    reply = "<think>the file is missing, so cat fails</think>\nI predict:\n" \
            f"{OBS_OPEN}\nwrong\n{OBS_CLOSE}\n{OBS_OPEN}\nright\n{OBS_CLOSE}"
    assert extract_observation(reply) == ("right", True)
    assert extract_observation("**Environment Observation:**\nplain") == ("plain", False)


def test_all_seven_domains_registered():
    assert set(domain_names()) >= {"terminal", "swe", "search", "mcp", "web", "os", "android"}
    for name in domain_names():
        dom = get_domain(name)
        assert dom.action_format and dom.observation_format


def test_verifier_prefers_the_real_observation():
    dom = get_domain("terminal")
    ref = "user@sandbox:~/work$ cat x\ncat: x: No such file or directory\nuser@sandbox:~/work$"
    exact = dom.verify(f"<think>hm</think>{OBS_OPEN}\n{ref}\n{OBS_CLOSE}", ref)
    untagged = dom.verify(ref, ref)
    wrong = dom.verify(f"{OBS_OPEN}\nuser@sandbox:~/work$ cat x\nhello\n{OBS_CLOSE}", ref)
    assert exact.score == 1.0 and exact.details["exact"] == 1.0
    assert untagged.score < exact.score
    assert wrong.score < exact.score and wrong.details["error_match"] == 0.0


def test_system_prompt_variants_per_stage(prepared_run):
    import datasets

    from lwm.tracking import RunPaths
    dom = get_domain("terminal")
    heads = [v.format(env=dom.description) for v in dom.PROMPT_VARIANTS]
    sft = datasets.Dataset.from_parquet(RunPaths(prepared_run).shards("sft"))
    assert set(sft["prompt_variant"]) == set(range(render.FIRST_SFT_VARIANT, len(heads)))
    for rec in sft:
        assert rec["prompt"][0]["content"].startswith(heads[rec["prompt_variant"]])
    rl = datasets.Dataset.from_parquet(RunPaths(prepared_run).shards("rl"))
    assert all(r["prompt"][0]["content"].startswith(heads[render.RL_VARIANT]) for r in rl)
    assert render.cpt_document(dom, _traj()).startswith(heads[render.CPT_VARIANT])
    # Dynamic parts survive every variant.
    for v in range(len(heads)):
        prompt = dom.system_prompt(_traj(), v, instruction="make the command fail")
        assert _traj().task in prompt and prompt.endswith("Simulation instruction: make the command fail")
