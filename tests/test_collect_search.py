"""The search collector end to end: a real BM25 index over Debian package descriptions, the
Python documentation and man pages, real tool calls, errors as observations.

Needs python3-doc and man pages from apt, tantivy from PyPI, and the one-time setup
`python -m data_pipeline.collect.search_index --fetch` (apt long descriptions into the cache).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from omegaconf import OmegaConf

from data_pipeline.collect.base import ActionError
from data_pipeline.collect.runner import collect
from data_pipeline.collect.search import SearchCollector
from data_pipeline.collect.search_tasks import TASKS, make_task, pkg_url
from lwm.config import LWMConfig
from lwm.domains.tools import parse_tool_call
from lwm.schema import Step, Trajectory, load_trajectories, validate


def make_cfg(**overrides):
    cfg = OmegaConf.structured(LWMConfig)
    cfg.wandb.mode = "disabled"
    cfg.data.domains = ["search"]
    cfg.collect.workers = 1
    cfg.collect.num_trajectories = 2
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def collector():
    return SearchCollector(make_cfg().collect)


@pytest.fixture(scope="module")
def env(collector):
    env = collector.environment()
    yield env
    env.close()


def run(env, task):
    first = env.reset(task)
    steps = [Step(a, env.step(a)) for a in task.actions]
    env.close()
    return first, steps


def test_every_task_is_real_and_has_an_error(collector, env):
    assert len(TASKS) >= 8
    for i, name in enumerate(TASKS):
        task = collector.task(i, seed=1)
        assert task.name == name
        first, steps = run(env, task)
        traj = Trajectory(id=f"t{i}", domain="search", source="test", steps=steps, task=task.instruction,
                          tools=list(env.tools), initial_observation=first, meta={"params": task.params})
        validate(asdict(traj))
        assert any(s.observation.startswith(("Error:", "No results found")) for s in steps), name
        assert sum(s.observation.startswith("[1] ") or "\n[1] " in s.observation for s in steps) >= 1, name


def test_search_extract_and_memory(env):
    env.reset()
    out = env.step(json.dumps({"name": "web_search", "arguments": {"query": "borgbackup deduplicating"}}))
    first = out.split("\n\n")[1].splitlines()
    assert first[0] == f"[1] {pkg_url('borgbackup')}"
    assert first[1].startswith("Title: borgbackup - ") and first[2].startswith("Snippet: ")
    assert first[3].startswith("Date: 20")
    batched = env.step(json.dumps({"name": "web_search", "arguments": {
        "query": ["python heapq", "qzxvbnmqq"], "top_k": 2}}))
    hits, empty = batched.split("\n---\n")
    assert "https://docs.python.org/3/library/heapq.html" in hits and hits.count("\n[") == 2
    assert empty == 'No results found for "qzxvbnmqq".'
    page = env.step(json.dumps({"name": "web_extractor", "arguments": {"url": pkg_url("borgbackup")}}))
    assert page.startswith("# Package: borgbackup (") and "deduplicat" in page
    assert "Borg" in page.split("- **Section:**")[0]  # the long description (apt Translation-en)
    doc = env.step(json.dumps({"name": "web_extractor",
                               "arguments": {"url": "https://docs.python.org/3/library/heapq.html"}}))
    assert doc.startswith("# `heapq`") and "heappush" in doc
    man = env.step(json.dumps({"name": "web_extractor",
                               "arguments": {"url": "https://manpages.debian.org/bookworm/tar.1"}}))
    assert "NAME" in man and "tar" in man
    bad = env.step(json.dumps({"name": "web_extractor", "arguments": {"url": "https://nowhere.example/x"}}))
    assert bad == "Error: failed to fetch https://nowhere.example/x: 404 Not Found."
    assert env.step('{"name": "browse", "arguments": {}}').startswith("Error: unknown tool 'browse'")
    env.step(json.dumps({"name": "dict_memory", "arguments": {"operation": "add", "key": "k", "value": "v"}}))
    assert "k: v" == env.step('{"name": "dict_memory", "arguments": {"operation": "retrieve", "key": "k"}}')
    env.reset()  # memory is per episode
    assert env.step('{"name": "dict_memory", "arguments": {"operation": "retrieve", "key": "k"}}') \
        == "Error: key 'k' not found (keys: none)."


def test_corpus_dirs_are_indexed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "runbook.md").write_text("# Payroll runbook\n\nRestart the quuxinator service nightly.\n")
    (docs / "faq.html").write_text("<html><title>Team FAQ</title><body><h1>FAQ</h1>"
                                   "<p>Badges open the zorblatt door.</p></body></html>")
    cfg = make_cfg(**{"collect.search.sources": [], "collect.search.corpus_dirs": [str(docs)],
                      "collect.search.cache_dir": str(tmp_path / "cache")})
    env = SearchCollector(cfg.collect).environment()
    env.reset()
    out = env.step('{"name": "web_search", "arguments": {"query": "quuxinator"}}')
    assert f"[1] {(docs / 'runbook.md').as_uri()}\nTitle: Payroll runbook" in out
    page = env.step(json.dumps({"name": "web_extractor", "arguments": {"url": (docs / "faq.html").as_uri()}}))
    assert page.startswith("# Team FAQ") and "zorblatt door" in page
    assert len(list((tmp_path / "cache").glob("index-*"))) == 1
    SearchCollector(cfg.collect).environment()  # reuses the cached index
    assert len(list((tmp_path / "cache").glob("index-*"))) == 1


def test_actions_and_replies(collector):
    assert parse_tool_call('{"name": "web_search", "arguments": "{\\"query\\": \\"x\\"}"}') == \
        ("web_search", {"query": "x"})
    for bad in ("web_search('x')", "[1]", '{"arguments": {}}', '{"name": "x", "arguments": [1]}'):
        with pytest.raises(ActionError):
            collector.check_action(bad)
    assert "web_extractor" in collector.agent_prompt()
    reply = 'I will search.\n{"name": "web_search", "arguments": {"query": "tar"}}'
    assert json.loads(collector.parse_reply(reply)) == {"name": "web_search", "arguments": {"query": "tar"}}
    assert collector.parse_reply("DONE: the answer is 42") == ""
    assert collector.parse_reply("hmm, not sure") is None


def test_tasks_vary_with_seed():
    a, b = make_task(0, seed=0), make_task(0, seed=5)
    assert a.name == b.name
    assert [make_task(i, 0).actions for i in range(9)] != [make_task(i, 5).actions for i in range(9)]
    assert make_task(3, 7).actions == make_task(3, 7).actions


def test_generic_runner(tmp_path):
    summary = collect(make_cfg(), tmp_path)
    assert summary["trajectories"] == 2 and summary["failures"] == 0
    trajs = load_trajectories(tmp_path / "trajectories.jsonl", domains={"search"})
    assert {t.meta["task_name"] for t in trajs} == {"package_research", "python_module"}
    assert all(t.tools and t.tools[0]["function"]["name"] == "web_search" for t in trajs)


def test_package_urls_name_the_release_not_an_archive_on_top(tmp_path, monkeypatch):
    """apt's security and updates lists sort before the release's own by file name; the
    corpus's URLs and dates come from the release."""
    from data_pipeline.collect import search_index
    for name, date in (("bookworm-security", "Mon, 30 Nov 2026 10:00:00 UTC"),
                       ("bookworm-updates", "Tue, 01 Dec 2026 08:00:00 UTC"),
                       ("bookworm", "Sat, 11 Jul 2026 09:30:00 UTC")):
        (tmp_path / f"deb.debian.org_debian_dists_{name}_InRelease").write_text(
            f"Origin: Debian\nSuite: x-{name}\nCodename: {name}\nDate: {date}\n")
    monkeypatch.setattr(search_index, "APT_LISTS", tmp_path)
    assert search_index._apt_date() == ("bookworm", "2026-07-11")
