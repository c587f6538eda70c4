import json

import pytest

from lwm.schema import TrajectoryError, Trajectory, load_trajectories, validate
from lwm.tracking import RunPaths
from tests.conftest import TRAJECTORIES, make_cfg

GOOD = {"id": "a", "domain": "terminal", "source": "test", "task": "t",
        "steps": [{"action": "[]", "observation": "$"}]}


def test_good_record_round_trips():
    traj = Trajectory.from_dict(GOOD)
    assert json.loads(traj.to_json())["steps"] == GOOD["steps"]
    assert json.loads(traj.to_json())["schema_version"] == 1


@pytest.mark.parametrize("change,field", [
    ({"id": None}, "id"),
    ({"steps": []}, "steps"),
    ({"steps": [{"action": "x"}]}, "steps[0].observation"),
    ({"steps": [{"action": 3, "observation": "o"}]}, "steps[0].action"),
    ({"tools": "nope"}, "tools"),
    ({"colour": "red"}, "colour"),
    ({"schema_version": 99}, "schema_version"),
])
def test_bad_record_names_field(change, field):
    rec = {**GOOD, **change}
    with pytest.raises(TrajectoryError) as err:
        validate(rec, "f.jsonl", 7)
    assert err.value.field == field
    assert "f.jsonl:7" in str(err.value) and field in str(err.value)


def test_unknown_domain_is_rejected():
    with pytest.raises(TrajectoryError, match="unknown domain 'chess'"):
        validate({**GOOD, "domain": "chess"}, domains={"terminal"})


def test_strict_loader_names_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(TrajectoryError, match=r"t.jsonl:2"):
        load_trajectories(path)


def test_prepare_quarantines_bad_records(tmp_path):
    from data_pipeline.prepare import prepare
    src = tmp_path / "mixed.jsonl"
    good = TRAJECTORIES.read_text().splitlines()
    bad = ["{broken", json.dumps({**GOOD, "id": ""}), json.dumps({**GOOD, "domain": "chess"})]
    duplicate = [good[0]]  # a repeated record is filtered by dedup, not quarantined
    src.write_text("\n".join(good + bad + duplicate) + "\n")
    run = tmp_path / "run"
    manifest = prepare(make_cfg(run, f"prepare.input={src}"), RunPaths(run))
    rec = manifest["records"]
    assert rec["in"] == len(good) + len(bad) + 1 == rec["kept"] + rec["quarantined"] + rec["filtered"]
    assert rec["quarantined"] == len(bad) and rec["filter_reasons"] == {"duplicate": 1}
    lines = [json.loads(l) for l in (run / "prepare" / "quarantine.jsonl").read_text().splitlines()]
    assert {q["field"] for q in lines} == {"<line>", "id", "domain"}
    assert all(q["reason"] and q["file"] == str(src) for q in lines)
