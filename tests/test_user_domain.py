"""A domain of one's own, as the README walks it: the example Helpdesk chat logs
(examples/tickets/) through `lwm ingest`, `lwm prepare` on two worker processes (each must
register the domain itself), `lwm sft` from a tiny checkpoint and `lwm eval`, to a report with a
tickets column; and each way a user domain used to fail late or silently, now a clear error."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import lwm.domains
from lwm.tracking import RunPaths
from tests.conftest import make_cfg, run_cli

ROOT = Path(__file__).resolve().parent.parent
CHATS = ROOT / "examples" / "tickets" / "chats.jsonl"
DECLARE = "data.extra_domains={tickets: examples.tickets.domain:TicketsDomain}"
INGEST = ["ingest.format=openai_chat", f"ingest.path={CHATS}", "ingest.domain=tickets"]


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """Domains registered by a test stay in it."""
    monkeypatch.setattr(lwm.domains, "_REGISTRY", dict(lwm.domains._REGISTRY))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))


def test_chat_logs_to_an_eval_report_with_the_domains_column(tmp_path):
    from tests.helpers.checkpoint import save_tiny_checkpoint
    run = tmp_path / "run"
    out = run_cli("ingest", run, "data=tickets", *INGEST).stdout
    assert "ingest: 40 trajectories" in out
    # An ingest-only run prepares; two tasks on two workers, which start with the built-ins only.
    run_cli("prepare", run, "data=tickets", "prepare.tasks=2", "prepare.workers=2", "prepare.dedup=false")
    manifest = json.loads((run / "prepare" / "manifest.json").read_text())
    assert manifest["records"]["in"] == manifest["records"]["kept"] == 40
    assert manifest["domains"] == {"tickets": 40} and manifest["eval"]["tickets"] > 0
    assert manifest["inputs"] == [str(run / "ingest" / "openai_chat.jsonl")]
    init = save_tiny_checkpoint(run, tmp_path / "init")
    run_cli("sft", run, "data=tickets", f"sft.init={init}", "sft.max_steps=2", "sft.batch_size=2",
            "sft.max_length=1536", "sft.save_every=0", ranks=2)  # each torchrun rank registers it
    run_cli("eval", run, "data=tickets", "eval.max_samples=2", "eval.max_new_tokens=8",
            "eval.controllability_samples=0", "eval.plots=false")
    report = (run / "eval" / "report.md").read_text()
    assert "| model | tickets | micro" in report and "| sft |" in report

    # The same eval without the declaration stops before generating, naming the override.
    cfg = make_cfg(run, "eval.max_samples=2")
    with pytest.raises(ValueError, match=r"samples of tickets.*data\.extra_domains=\{tickets: "
                                         r"examples\.tickets\.domain:TicketsDomain\}"):
        from eval.run import evaluate
        evaluate(cfg, RunPaths(run))


def test_the_override_needs_no_plus_and_adds_the_domain(tmp_path):
    from launch.stages import setup
    cfg = make_cfg(tmp_path, DECLARE)
    assert dict(cfg.data.extra_domains) == {"tickets": "examples.tickets.domain:TicketsDomain"}
    setup(cfg)
    assert list(cfg.data.domains) == ["terminal", "tickets"]  # declared: one of the run's domains
    assert lwm.domains.get_domain("tickets").judge_paragraph().startswith("Hold strictly")
    cfg = make_cfg(tmp_path, DECLARE, "data.extra_domains.notes=examples.tickets.domain:TicketsDomain")
    assert set(cfg.data.extra_domains) == {"tickets", "notes"}  # one key at a time works too
    assert lwm.domains.run_domains(["tickets"], {"tickets": "x", "other": "y"}) == ["tickets"]  # a selection
    with pytest.raises(Exception, match="extra_domainz"):  # unknown keys still fail
        make_cfg(tmp_path, "data.extra_domainz={a: b}")


def test_a_module_not_importable_names_pythonpath(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"data\.extra_domains\.mine: cannot import module 'mypkg\.world'"
                                         r".*PYTHONPATH"):
        lwm.domains.register_extra({"mine": "mypkg.world:MyDomain"})
    with pytest.raises(ValueError, match=r"has no 'Nope' \(its Domain subclasses: TicketsDomain\)"):
        lwm.domains.register_extra({"tickets": "examples.tickets.domain:Nope"})
    # a module in the current directory imports (the `lwm` script does not put it on sys.path),
    # and goes on PYTHONPATH for the processes this one starts
    (tmp_path / "helpdesk_here.py").write_text(
        "from examples.tickets.domain import TicketsDomain\n\nclass Here(TicketsDomain):\n    name = 'here'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))] + [str(ROOT)])
    lwm.domains.register_extra({"here": "helpdesk_here:Here"})
    assert str(tmp_path) in os.environ["PYTHONPATH"].split(os.pathsep)


def test_ingest_of_an_unregistered_domain_fails_at_once(tmp_path):
    from data_pipeline.ingest import ingest
    cfg = make_cfg(tmp_path, *INGEST)
    with pytest.raises(ValueError, match=r"ingest\.domain=tickets is not a registered domain.*"
                                         r"data\.extra_domains=\{tickets: "):
        ingest(cfg, RunPaths(tmp_path))


def test_ingest_where_nothing_survives_names_the_quarantine_and_first_reason(tmp_path):
    from data_pipeline.ingest import ingest
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": "nope"}\n')
    cfg = make_cfg(tmp_path, "data=tickets", "ingest.format=openai_chat", f"ingest.path={bad}",
                   "ingest.domain=tickets")
    with pytest.raises(ValueError, match=r"none of the 2 records .* became a trajectory; every one is in "
                                         r".*quarantine/openai_chat\.jsonl\. The first: .*bad\.jsonl, "
                                         r"record 1, field messages: no assistant tool call"):
        ingest(cfg, RunPaths(tmp_path))
    assert not (tmp_path / "ingest" / "openai_chat.jsonl").exists()  # prepare reads nothing of it


def test_prepare_reads_each_file_once_and_drops_duplicate_ids(tmp_path):
    from data_pipeline.prepare import prepare
    lines = CHATS.read_text().splitlines()
    run = tmp_path / "run"
    (run / "ingest").mkdir(parents=True)
    from data_pipeline.ingest.openai_chat import _trajectory
    trajs = [_trajectory(json.loads(line), "tickets", str(CHATS), i) for i, line in enumerate(lines, 1)]
    ingested = run / "ingest" / "openai_chat.jsonl"
    ingested.write_text("".join(t.to_json() + "\n" for t in trajs))
    again = tmp_path / "export_again.jsonl"  # the first 5 again (a log exported twice)
    again.write_text("".join(t.to_json() + "\n" for t in trajs[:5]))
    cfg = make_cfg(run, "data=tickets", f"prepare.input={ingested}", f"data.trajectories=[{again}]",
                   "prepare.dedup=false", "prepare.tasks=2", "prepare.workers=1")
    manifest = prepare(cfg, RunPaths(run))
    assert manifest["inputs"] == [str(ingested), str(again)]  # prepare.input = the ingest file: once
    assert manifest["records"] == {"in": 45, "kept": 40, "quarantined": 0, "filtered": 5,
                                   "quarantine_reasons": {}, "filter_reasons": {"duplicate id": 5}}


def test_prepare_where_nothing_survives_says_why(tmp_path):
    from data_pipeline.prepare import prepare
    cfg = make_cfg(tmp_path, f"prepare.input={tmp_path / 'in.jsonl'}", "prepare.dedup=false")
    from data_pipeline.ingest.openai_chat import _trajectory
    rec = json.loads(CHATS.read_text().splitlines()[0])
    (tmp_path / "in.jsonl").write_text(_trajectory(rec, "tickets", "chats", 1).to_json() + "\n")
    with pytest.raises(ValueError, match=r"none of the 1 records .* survived curation: 1 quarantined.*"
                                         r"in\.jsonl, line 1, field domain: unknown domain 'tickets'.*"
                                         r"data\.extra_domains declares"):
        prepare(cfg, RunPaths(tmp_path))


def test_the_domains_collector_plugs_in(tmp_path):
    from data_pipeline.collect.runner import collect
    cfg = make_cfg(tmp_path, "data=tickets", "collect.num_trajectories=5", "collect.workers=2")
    summary = collect(cfg, tmp_path / "collect")
    assert summary["trajectories"] == 5 and summary["domains"] == {"tickets": 5}, summary


def test_prepare_slurm_jobs_get_this_processes_pythonpath(tmp_path, monkeypatch):
    from data_pipeline.engine import Executors
    monkeypatch.setenv("PYTHONPATH", "/home/me/domains")
    job = Executors("slurm", tmp_path, 1)("curate", [], 2)
    assert "export PYTHONPATH=/home/me/domains" in job.get_launch_file_contents(job.get_sbatch_args(), "run")
