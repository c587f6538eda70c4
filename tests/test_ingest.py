"""`lwm ingest`: public log formats into schema-valid trajectories, bad records quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_pipeline.ingest import ingest
from lwm import render
from lwm.config import LWMConfig
from lwm.domains import get_domain
from lwm.schema import Step, Trajectory, load_trajectories
from lwm.tracking import RunPaths

DATA = Path(__file__).parent / "data"


def make_cfg(fmt: str, path: Path, **ingest_fields):
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.ingest.format, cfg.ingest.path = fmt, str(path)
    for key, value in ingest_fields.items():
        cfg.ingest[key] = value
    return cfg


def mcp_trajectory() -> Trajectory:
    tools = [{"name": "read_file", "description": "Read a file",
              "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
    return Trajectory(
        id="mcp-scripted-s0-000001", domain="mcp", source="collect.mcp/scripted@1",
        task="Read the notes.\n\nThen stop.", tools=tools, initial_observation="",
        steps=[Step('{"name": "read_file", "arguments": {"path": "/a.txt"}}', "alpha\nbeta"),
               Step('{"name": "read_file", "arguments": {"path": "/b"}}', "Error: ENOENT"),
               Step("plain text action", "<predicted_observation> inside")])


def test_agentworldbench_round_trip(tmp_path):
    trajs = load_trajectories(DATA / "terminal_trajectories.jsonl")[:3] + [mcp_trajectory()]
    src = tmp_path / "bench.jsonl"
    with open(src, "w") as f:
        for traj in trajs:
            domain = get_domain(traj.domain)
            for t in range(len(traj.steps), 0, -1):   # any order
                f.write(json.dumps(render.agentworldbench_record(domain, traj, t)) + "\n")
    summary = ingest(make_cfg("agentworldbench", src), RunPaths(tmp_path / "run"))
    assert summary["trajectories"] == len(trajs) and summary["quarantined"] == 0
    back = {t.id: t for t in load_trajectories(tmp_path / "run/ingest/agentworldbench.jsonl")}
    for traj in trajs:
        got = back[traj.id]
        assert got.steps == traj.steps
        assert got.initial_observation == traj.initial_observation
        assert (got.domain, got.task, got.tools) == (traj.domain, traj.task, traj.tools)


def test_agentworldbench_missing_turn_is_quarantined(tmp_path):
    traj = mcp_trajectory()
    src = tmp_path / "bench.jsonl"
    prompt, answer = render.turn_messages(get_domain("mcp"), traj, 3, max_history=0)
    rec = {"task": "mcp", "id": f"{traj.id}-t3", "prompt": prompt, "response": [answer]}
    src.write_text(json.dumps(rec) + "\n")   # our older layout: turns 1 and 2 are in no sample
    with pytest.raises(ValueError, match=r"none of the 1 records .* became a trajectory; every one is in "
                                         r".*quarantine/partial\.jsonl\. The first: .*bench\.jsonl, record 1"):
        ingest(make_cfg("agentworldbench", src, name="partial"), RunPaths(tmp_path))
    reason = json.loads((tmp_path / "ingest/quarantine/partial.jsonl").read_text())
    assert reason["source"] == str(src) and reason["record"] == 1 and "turns [1, 2]" in reason["reason"]


def test_openai_chat(tmp_path):
    summary = ingest(make_cfg("openai_chat", DATA / "ingest/openai_chat.jsonl"), RunPaths(tmp_path))
    assert (summary["trajectories"], summary["quarantined"]) == (1, 3)
    [traj] = load_trajectories(tmp_path / "ingest/openai_chat.jsonl", domains={"mcp"})
    assert traj.id == "chat-001" and traj.domain == "mcp"
    assert traj.task == "List the files in /data and read notes.txt."
    assert [json.loads(s.action)["name"] for s in traj.steps] == ["list_directory", "read_file", "read_file"]
    assert json.loads(traj.steps[1].action)["arguments"] == {"path": "/data/notes.txt"}
    assert traj.steps[1].observation == "buy milk\ncall bob"
    assert traj.steps[2].observation.startswith("Error: ENOENT")
    assert [t["name"] for t in traj.tools] == ["list_directory", "read_file"]
    bad = [json.loads(l) for l in (tmp_path / "ingest/quarantine/openai_chat.jsonl").read_text().splitlines()]
    assert [(b["record"], b["field"]) for b in bad] == [
        (2, "messages[1].tool_calls[0].id"), (3, "messages[1].tool_calls[0].function.arguments"),
        (4, "<line>")]
    assert json.loads((tmp_path / "ingest/metrics.json").read_text())["trajectories"] == 1


def test_unknown_format_and_domain(tmp_path):
    with pytest.raises(ValueError, match="ingest.format"):
        ingest(make_cfg("nope", tmp_path), RunPaths(tmp_path))
    with pytest.raises(ValueError, match=r"ingest\.domain=nodomain is not a registered domain.*"
                                         r"data\.extra_domains=\{nodomain: "):  # before reading a record
        ingest(make_cfg("openai_chat", DATA / "ingest/openai_chat.jsonl", domain="nodomain"),
               RunPaths(tmp_path))
