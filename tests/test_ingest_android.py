"""`lwm ingest` of AndroidWorld episodes and AndroidControl TFRecords into android trajectories."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_pipeline.ingest import android, ingest, tfrecord
from lwm.config import LWMConfig
from lwm.schema import load_trajectories, validate
from lwm.tracking import RunPaths

FIXTURES = Path(__file__).parent / "data/ingest/android"
SHARD = FIXTURES / "androidcontrol-00000-of-00001"


def make_cfg(fmt: str, path: Path, **fields):
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.ingest.format, cfg.ingest.path = fmt, str(path)
    for key, value in fields.items():
        cfg.ingest[key] = value
    return cfg


def run(tmp_path: Path, fmt: str, path: Path, name: str = "") -> tuple[dict, dict, list[dict]]:
    """(summary, trajectories by id, quarantined records) of one ingest."""
    summary = ingest(make_cfg(fmt, path, name=name), RunPaths(tmp_path))
    out = tmp_path / "ingest" / f"{name or fmt}.jsonl"
    for lineno, line in enumerate(out.read_text().splitlines(), 1):
        validate(json.loads(line), str(out), lineno, {"android"})
    trajs = {t.id: t for t in load_trajectories(out, domains={"android"})}
    bad = [json.loads(l) for l in (tmp_path / "ingest/quarantine" / f"{name or fmt}.jsonl").read_text().splitlines()]
    return summary, trajs, bad


def records(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return [data for _, data in tfrecord.tfrecords(f)]


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", tfrecord.masked_crc(length)) + data
            + struct.pack("<I", tfrecord.masked_crc(data)))


def test_fixtures_are_what_the_writer_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    writer.write(tmp_path)
    for made in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert made.read_bytes() == (FIXTURES / made.relative_to(tmp_path)).read_bytes(), made.name


def test_crc32c():
    assert tfrecord.crc32c_py(b"123456789") == 0xE3069283   # the CRC-32C check value
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    data = SHARD.read_bytes()
    assert tfrecord.crc32c(data) == tfrecord.crc32c_py(data)


def test_androidcontrol(tmp_path):
    summary, trajs, bad = run(tmp_path, "androidcontrol", SHARD)
    assert (summary["trajectories"], summary["steps"], summary["quarantined"]) == (2, 4, 3)
    traj = trajs["androidcontrol-1001"]
    assert traj.domain == "android" and traj.source == "ingest.androidcontrol"
    assert traj.task == "Turn off Wi-Fi in the settings"
    assert [s.action for s in traj.steps] == ['{"action_type":"open_app","app_name":"Settings"}',
                                              '{"action_type":"click","x":540,"y":385}',
                                              '{"action_type":"click","x":540,"y":385}']
    assert traj.initial_observation.splitlines()[1] == (
        '[1] android.widget.Button "Settings" id=com.android.launcher3:id/icon '
        'bounds=(0,300,1080,470) clickable')
    # Screen t+1 follows action t; the invisible node is left out, the scrolling parent kept.
    assert traj.steps[0].observation.startswith('[0] android.widget.TextView "Settings"')
    last = traj.steps[2].observation.splitlines()
    assert last[1] == ('[1] android.widget.Button "Use Wi-Fi" desc="Wi-Fi, off" '
                       'id=android:id/switch_widget bounds=(0,300,1080,470) clickable')
    assert last[2] == "[2] androidx.recyclerview.widget.RecyclerView bounds=(0,-120,1080,2400) scrollable"
    assert "Hidden" not in traj.steps[2].observation
    assert traj.meta["step_instructions"][1] == "Tap Network & internet"
    assert traj.meta["screen_size"] == [1080, 2400]
    # As many actions as screens: the last action has no screen after it.
    short = trajs["androidcontrol-1002"]
    assert len(short.steps) == 1 and short.meta["final_action"] == '{"action_type":"wait"}'
    assert [(b["source"], b["record"], b["field"]) for b in bad] == [
        (str(SHARD), 2, "actions[0]"), (str(SHARD), 3, "actions"),
        (str(SHARD), 4, "accessibility_trees[1]")]
    assert "unknown action_type 'tap'" in bad[0]["reason"]
    assert "1 actions cannot align with 4 screens" in bad[1]["reason"]


def test_androidcontrol_corrupt_crc_is_quarantined(tmp_path):
    recs = records(SHARD)
    broken = bytearray(frame(recs[0]))
    broken[40] ^= 0xFF   # a byte inside record 0's data: its data CRC no longer matches
    plain = tmp_path / "data" / "episodes.tfrecord"   # uncompressed this time
    plain.parent.mkdir()
    plain.write_bytes(bytes(broken) + frame(recs[1]))
    summary, trajs, bad = run(tmp_path, "androidcontrol", plain.parent)
    assert summary["trajectories"] == 1 and list(trajs) == ["androidcontrol-1002"]
    assert bad[0]["source"] == str(plain) and bad[0]["record"] == 0 and bad[0]["field"] == "<record>"
    assert "data CRC32C mismatch" in bad[0]["reason"] and "skipped" in bad[0]["reason"]
    # A bad length CRC loses the framing: the rest of the file cannot be read.
    header = bytearray(frame(recs[0]))
    header[9] ^= 0x01
    plain.write_bytes(frame(recs[1]) + bytes(header) + frame(recs[0]))
    summary, trajs, bad = run(tmp_path, "androidcontrol", plain, name="length")
    assert summary["trajectories"] == 1 and [(b["record"], b["field"]) for b in bad] == [(1, "<framing>")]
    assert "length CRC32C mismatch" in bad[0]["reason"]
    plain.write_bytes(frame(recs[1])[:-3])   # cut inside the data CRC: nothing survives, which fails
    with pytest.raises(ValueError, match=r"none of the 1 records .*quarantine/cut\.jsonl.*file ends inside record 0"):
        run(tmp_path, "androidcontrol", plain, name="cut")


def test_androidworld(tmp_path):
    folder = FIXTURES / "androidworld_run"
    summary, trajs, bad = run(tmp_path, "androidworld", folder)
    assert (summary["trajectories"], summary["quarantined"]) == (2, 2)
    traj = trajs["androidworld-ContactsAddContact_0-0"]
    assert traj.task == "Create a new contact for Ada." and traj.source == "ingest.androidworld"
    assert [json.loads(s.action)["action_type"] for s in traj.steps] == [
        "open_app", "click", "input_text", "click"]
    assert traj.steps[2].action == '{"action_type":"input_text","index":0,"text":"Ada"}'
    # The index an action names is the element's line: [1] is the "Create contact" button.
    assert json.loads(traj.steps[1].action)["index"] == 1
    assert traj.steps[0].observation.splitlines()[1].startswith(
        '[1] android.widget.Button desc="Create contact" '
        'id=com.google.android.contacts:id/floating_action_button bounds=(800,2000,1040,2200) clickable')
    assert traj.steps[2].observation.splitlines()[0] == (
        '[0] android.widget.EditText "Ada" hint="First name" id=com.google.android.contacts:id/first_name '
        'bounds=(40,400,1040,520) clickable editable focused')
    assert [s["step"] for s in traj.meta["skipped_steps"]] == [1, 4]
    assert traj.meta["final_action"] == '{"action_type":"status","goal_status":"complete"}'
    assert traj.meta["task_template"] == "ContactsAddContact" and traj.meta["is_successful"] == 1.0
    wifi = trajs["androidworld-SystemWifiTurnOff_0-0"]
    assert wifi.steps[0].observation == wifi.steps[1].observation.replace("clickable checkable",
                                                                          "clickable checkable checked")
    where = str(folder / "SystemWifiTurnOff_0.json")
    assert [(b["source"], b["record"], b["field"]) for b in bad] == [
        (where, 1, "episode_data.before_element_list[0]"),
        (where, 2, "episode_data.before_element_list[1][0]")]


def test_androidworld_jsonl_of_step_dicts(tmp_path):
    """One episode a line, its episode_data a list of step dicts, a broken line quarantined."""
    screen = [{"class_name": "android.widget.Button", "text": "OK", "is_clickable": True,
               "bbox": {"x_min": 0.1, "x_max": 0.5, "y_min": 0.2, "y_max": 0.25}}]
    ep = {"goal": "Press OK", "episode_data": [
        {"before_element_list": screen, "after_element_list": [],
         "action_output": 'Reason: ok\nAction: {"action_type": "click", "index": 0}'}]}
    src = tmp_path / "eps.jsonl"
    src.write_text(json.dumps(ep) + "\n{broken\n")
    _, trajs, bad = run(tmp_path, "androidworld", src)
    [traj] = trajs.values()
    assert traj.id == "androidworld-eps-1"
    assert traj.initial_observation == '[0] android.widget.Button "OK" bounds=(0.100,0.200,0.500,0.250) clickable'
    assert traj.steps[0].observation == "(no UI elements)"
    assert [(b["record"], b["field"]) for b in bad] == [(2, "<line>")]


@pytest.mark.parametrize("raw,reason", [
    ('{"action_type": "tap"}', "unknown action_type"),
    ('{"action_type": "click", "index": 1, "x": 2}', "both an index and x/y"),
    ('{"action_type": "scroll", "direction": "sideways"}', "unknown direction"),
    ('{"action_type": "click", "button": 1}', "unknown action key"),
    ('{"action_type": "click", "x": "left"}', "x is not a number"),
    ("[1]", "not a JSON object"),
    ("{oops", "not JSON"),
])
def test_bad_actions(raw, reason):
    with pytest.raises(android._Bad, match=reason):
        android.action_json(raw, "actions[0]")


def test_action_json_is_compact_and_ordered():
    raw = {"y": 7.0, "x": 3, "action_type": "click", "text": None}
    assert android.action_json(raw, "a") == '{"action_type":"click","x":3,"y":7}'


def test_lwm_ingest_command(tmp_path):
    """`lwm ingest ingest.format=androidcontrol ingest.path=...`: the overrides the command line
    gives, composed by Hydra and run by the stage launcher the `lwm` entry point calls."""
    from conftest import make_cfg as compose_cfg
    from launch.stages import run_stage
    cfg = compose_cfg(tmp_path, "stage=ingest", "ingest.format=androidcontrol", f"ingest.path={SHARD}")
    summary = run_stage(cfg)
    assert (summary["trajectories"], summary["quarantined"]) == (2, 3)
    assert len(load_trajectories(tmp_path / "ingest/androidcontrol.jsonl", domains={"android"})) == 2
