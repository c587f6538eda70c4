"""Rule-mode eval offline with a tiny checkpoint: report, plots, resume, runs compared."""

import json
import shutil

import pytest
import yaml

from eval.report import compare_runs, main as report_main
from eval.run import evaluate
from lwm.tracking import RunPaths
from lwm.world_env import PERTURBATIONS
from tests.conftest import DATA, make_cfg
from tests.helpers.checkpoint import save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(prepared_run, tmp_path_factory):
    return save_tiny_checkpoint(prepared_run, tmp_path_factory.mktemp("tiny_eval") / "ckpt")


def _cfg(run, ckpt, *extra):
    return make_cfg(run, f"eval.checkpoint={ckpt}", "eval.max_samples=4", "eval.max_new_tokens=8",
                    "eval.batch_size=4", *extra)


def test_rule_mode_report_plots_and_resume(prepared_run, tiny_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "prepare").mkdir(parents=True)
    (run / "prepare" / "eval").symlink_to(prepared_run / "prepare" / "eval")
    summary = evaluate(_cfg(run, tiny_ckpt), RunPaths(run))
    result = summary["results"]["ckpt"]
    assert summary["mode"] == "rule" and result["samples"] == 4 and set(result["domains"]) == {"terminal"}
    terminal = result["domains"]["terminal"]
    for k in ("score", "chrf", "rouge_l", "bleu", "error_match"):
        assert 0.0 <= terminal[k] <= 1.0
    out = run / "eval"
    report = (out / "report.md").read_text()
    assert "| ckpt |" in report and "chrf" in report
    for png in ("per_domain.png", "stages.png", "distribution.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png})" in report
    assert json.loads((out / "metrics.json").read_text())["results"]["ckpt"]["micro"] == result["micro"]
    # a kill mid-write: the cut line is dropped, the rest kept, the result unchanged
    preds = out / "ckpt" / "predictions.jsonl"
    lines = preds.read_text().splitlines()
    preds.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    again = evaluate(_cfg(run, tiny_ckpt), RunPaths(run))
    assert len(preds.read_text().splitlines()) == 4
    assert again["results"]["ckpt"]["micro"] == pytest.approx(result["micro"])
    # a sweep's runs in one table
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    (other / "eval" / "metrics.json").write_text((out / "metrics.json").read_text())
    settings = yaml.safe_load((out / "config.yaml").read_text())
    (other / "eval" / "config.yaml").write_text(yaml.safe_dump(settings))
    table = compare_runs([run, other])   # the same settings: told apart by their folders
    assert "| run / ckpt |" in table and "| other / ckpt |" in table
    twin = tmp_path / "sweep2" / "run"    # another sweep's folder of the same name
    shutil.copytree(other / "eval", twin / "eval")
    assert f"| {twin} / ckpt |" in compare_runs([run, twin])
    lr = settings["sft"]["lr"]
    settings["sft"]["lr"], settings["run_name"] = 0.123, "renamed"   # a run's name is no setting
    (other / "eval" / "config.yaml").write_text(yaml.safe_dump(settings))
    report_main([str(run), str(other), "--out", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert f"| sft.lr={lr} / ckpt |" in printed and "| sft.lr=0.123 / ckpt |" in printed
    assert "Runs differ in: sft.lr" in printed and "chrf" in printed
    assert (tmp_path / "report" / "knob_sft.lr.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_layout_runs_through_rule_mode(tiny_ckpt, tmp_path):
    run = tmp_path / "bench"
    summary = evaluate(_cfg(run, tiny_ckpt, f"eval.input={DATA / 'eval' / 'bench'}", "eval.max_samples=0"),
                       RunPaths(run))
    result = summary["results"]["ckpt"]
    assert result["samples"] == 5 and set(result["domains"]) == {"terminal", "mcp"}
    # the consistency check applies where the real observation repeats earlier identifiers
    assert result["domains"]["terminal"]["consistency"] is not None


def test_controllability_is_scored_per_perturbation(prepared_run, tiny_ckpt, tmp_path):
    run = tmp_path / "run"
    (run / "prepare").mkdir(parents=True)
    (run / "prepare" / "eval").symlink_to(prepared_run / "prepare" / "eval")
    summary = evaluate(_cfg(run, tiny_ckpt, "eval.controllability_samples=2"), RunPaths(run))
    control = summary["results"]["ckpt"]["controllability"]["terminal"]
    assert set(control) == set(PERTURBATIONS) | {"samples"} and control["samples"] == 2
    assert all(0.0 <= control[k] <= 1.0 for k in PERTURBATIONS)
    asked = [json.loads(l) for l in (run / "eval" / "ckpt" / "controllability" / "predictions.jsonl")
             .read_text().splitlines()]
    assert len(asked) == 2 * len(PERTURBATIONS)
    assert "Controllability" in (run / "eval" / "report.md").read_text()
