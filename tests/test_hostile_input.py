"""Hostile input never crashes `lwm prepare` or `lwm ingest`, every input line is accounted for,
and no planted secret survives into anything they write (outputs, quarantine, logs, messages)."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipeline.curate.redact import redact_text
from data_pipeline.ingest import ingest
from lwm.schema import MAX_DEPTH, TrajectoryError, jsonl_lines, parse_line
from lwm.tracking import RunPaths
from tests.conftest import TINY, TRAJECTORIES
from tests.test_ingest import make_cfg as ingest_cfg

ROOT = Path(__file__).resolve().parent.parent
MAX_RECORD_BYTES = 65536  # prepare.max_record_bytes in these runs: a "huge" line stays cheap

# Forms redact.py catches; each secret is what must never appear in a written file.
AWS = "AKIA" + "Q7RZ4M2XK9PLW3TB"
GITHUB = "ghp_" + "x9Kq2LmZ7vTn4RbW8cYp1HdF6sJg3AeUoQ5i"
EMAIL = "dana.reyes@northwind-mail.net"
PASSWORD = "Tr0ub4dor-s3cret"
KEY_BODY = "MIIEowIBAAKCAQEA3vQk9Zr7Lw2XbN5pTg8HcYdUe1Fs6MjKa4RoPi0"
PLANTED = {
    AWS: f"export AWS_ACCESS_KEY_ID={AWS}",
    GITHUB: f"git clone https://github.com/acme/app --token {GITHUB}",
    EMAIL: f"mail sent to {EMAIL} ok",
    PASSWORD: f"mysql --user=root password={PASSWORD}",
    KEY_BODY: f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_BODY}\n-----END RSA PRIVATE KEY-----",
}
SECRETS = list(PLANTED)


def test_redaction_catches_the_planted_forms():
    """The premise of the checks below: a leak found there is prepare's, not a redaction miss."""
    for secret, text in PLANTED.items():
        assert secret not in redact_text(text), secret


def _all_secrets(i: int) -> str:
    return " | ".join(PLANTED.values()) + f" #{i}"


def _nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _valid() -> list[dict]:
    """The recorded terminal trajectories, every one carrying every secret somewhere."""
    recs = [json.loads(line) for line in TRAJECTORIES.read_text().splitlines()]
    for i, rec in enumerate(recs):
        place = i % 3
        if place == 0:
            rec["task"] = rec.get("task", "") + "\n" + _all_secrets(i)
        elif place == 1:
            rec["steps"][0]["observation"] += "\n" + _all_secrets(i)
        else:
            rec["initial_observation"] = rec.get("initial_observation", "") + "\n" + _all_secrets(i)
    return recs


def _hostile(rng: random.Random, base: dict) -> list[tuple[bytes, str]]:
    """(line without its newline, a pattern its "field: reason" must start with; field numbers
    as *)."""
    def secret_rec(**fields) -> dict:
        return {**base, "id": f"hostile-{rng.random()}", "task": _all_secrets(0), **fields}

    def dump(rec) -> bytes:
        return json.dumps(rec).encode()

    lines = []
    for _ in range(4):  # random bytes, led by a stray continuation byte: never UTF-8
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b" ")
        lines.append((b"\x80" + raw, "<line>: undecodable"))
    for _ in range(2):  # random text: UTF-8, not JSON
        text = "".join(rng.choice(string.printable.replace("\n", "")) for _ in range(rng.randrange(1, 300)))
        lines.append((b"x" + text.encode(), "<line>: invalid JSON"))
    lines += [
        # the known crash: a Latin-1 byte in an otherwise valid record
        (dump(secret_rec()).replace(b'"task": "', b'"task": "caf\xe9 '), "<line>: undecodable"),
        # the other known crash: a lone surrogate escape, in a record full of secrets
        (dump(secret_rec(steps=[{"action": "ls", "observation": "\ud800 " + PLANTED[AWS]}])),
         "<line>: unencodable text"),
        (dump(secret_rec(meta={"note": "x" * MAX_RECORD_BYTES})), "<line>: line too long"),
        (b"[" * 5000 + b"]" * 5000, "<line>: nested deeper than"),
        (dump(secret_rec(meta={"deep": _nested(MAX_DEPTH + 5)})), "meta: nested deeper than"),
        (dump(secret_rec(steps=[{"action": json.dumps(_nested(MAX_DEPTH + 5)), "observation": "x"}])),
         r"steps\[\*\]\.action: JSON nested deeper than"),
        (dump(secret_rec(meta={"n": 2 ** 70})), "meta: an integer beyond"),
        (b'{"id": "big", "n": ' + b"7" * 5000 + b"}", "<line>: invalid JSON"),
        (dump(secret_rec(id=7)), "id: expected str"),
        (dump(secret_rec(steps="ls")), "steps: expected list"),
        (dump(secret_rec(steps=[{"action": "ls", "observation": 3}])),
         r"steps\[\*\]\.observation: missing"),
        (dump(secret_rec(tools="x")), "tools: expected list"),
        (dump(secret_rec(domain=GITHUB)), "domain: unknown domain"),
        (dump({**secret_rec(), AWS: EMAIL}), "<[A-Z_]+>: unknown field"),  # a secret as a field name
        # schema-valid, with a "function" that is a string where OpenAI's shape has an object: the
        # tool hooks read it as naming no tool (once a crash); kept or filtered, never quarantined
        (dump(secret_rec(domain="mcp", tools=[{"function": PLANTED[GITHUB]}])), None),
        (dump(secret_rec(domain="mcp", steps=[{"action": json.dumps({"function": PLANTED[AWS]}),
                                               "observation": "x"}] * 2)), None),
        (b"[1, 2]", "<record>: expected a JSON object"),
        (b"null", "<record>: expected a JSON object"),
        (b'"' + PLANTED[PASSWORD].encode() + b'"', "<record>: expected a JSON object"),
        ("\ufeff".encode() + dump(secret_rec()), "<line>: invalid JSON"),  # a BOM
        (dump(secret_rec())[:-40], "<line>: invalid JSON"),  # cut mid-record
    ]
    return lines


def _fresh(rng: random.Random, traj_id: str, text: str) -> dict:
    """A terminal trajectory like no other in the input (MinHash keeps it), with every secret."""
    def words(n: int) -> str:
        return " ".join(rng.choice(["alpha", "beta", "gamma", "kappa", "sigma", "omega"])
                        + str(rng.randrange(10 ** 6)) for _ in range(n))
    steps = [{"action": json.dumps([{"keystrokes": f"echo {words(3)}\n", "duration": 0.1}]),
              "observation": f"user@sandbox:~$ echo\n{words(40)} {text}\n{_all_secrets(t)}\nuser@sandbox:~$"}
             for t in range(3)]
    return {"id": traj_id, "domain": "terminal", "source": "test/hostile", "task": f"{words(8)} {text}",
            "initial_observation": "user@sandbox:~$", "steps": steps}


def _write_inputs(d: Path) -> tuple[dict[str, list[tuple[bytes, str]]], int]:
    """Hostile input files; returns each file's quarantine expectations and the number of
    valid records (kept or filtered, never quarantined)."""
    rng = random.Random(18)
    valid = _valid()
    hostile = _hostile(rng, valid[0])
    body: list[tuple[bytes, str | None]] = [(json.dumps(r, ensure_ascii=bool(i % 2)).encode(), None)
                                           for i, r in enumerate(valid)]
    # a valid record whose id an earlier one carries (dropped as "duplicate id"), one with
    # control characters and an emoji escape (kept), a CRLF line (a near copy: deduplicated)
    body.append((json.dumps(_fresh(rng, valid[4]["id"], "")).encode(), None))
    body.append((json.dumps(_fresh(rng, "odd-text", "nul \u0000 bell \u0007 \U0001F600")).encode(), None))
    body.append((json.dumps({**valid[6], "id": "crlf"}).encode() + b"\r", None))
    for line in hostile:
        body.insert(rng.randrange(len(body) + 1), line)
    mixed = d / "mixed.jsonl"
    with open(mixed, "wb") as f:
        for raw, _ in body:
            f.write(raw + b"\n" + (b"\n  \n" if rng.random() < 0.1 else b""))  # blank lines don't count
    (d / "empty.jsonl").write_bytes(b"")
    # a truncated last line: no newline, cut JSON; and a valid last line without its newline
    (d / "truncated.jsonl").write_bytes(json.dumps({**valid[7], "id": "t1"}).encode() + b"\n"
                                        + json.dumps({**valid[8], "id": "t2"}).encode()[:-25])
    (d / "no_newline.jsonl").write_bytes(json.dumps({**valid[9], "id": "n1"}).encode())
    expect = {str(mixed): [x for x in body if x[1]],
              str(d / "truncated.jsonl"): [(b"", "<line>: invalid JSON")]}
    n_valid = sum(1 for x in body if not x[1]) + 2
    return expect, n_valid


def _chat(i: int, **extra) -> dict:
    return {"id": f"chat-{i}", "messages": [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Read the notes. " + _all_secrets(i)},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "read_file", "arguments": json.dumps({"path": "/notes", "auth": PLANTED[GITHUB]})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "notes: " + _all_secrets(i)},
        {"role": "assistant", "tool_calls": [{"id": "c2", "type": "function", "function": {
            "name": "read_file", "arguments": json.dumps({"path": "/todo"})}}]},
        {"role": "tool", "tool_call_id": "c2", "content": f"todo {i}: call {PLANTED[EMAIL]}"}],
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {}}}], **extra}


def _write_chat_log(path: Path) -> int:
    """An OpenAI chat log for `lwm ingest`, valid records among hostile ones; returns how many
    of its lines are hostile."""
    bad_call = _chat(90)
    bad_call["messages"][2]["tool_calls"][0]["id"] = GITHUB  # quoted by the reason
    lines = [json.dumps(_chat(1)).encode(), json.dumps(_chat(2)).encode(),
             json.dumps(_chat(3)).encode().replace(b"Read the", b"R\xe9ad the"),
             json.dumps(_chat(4, note="\ud800")).encode(),
             json.dumps(_chat(5, deep=_nested(MAX_DEPTH + 5))).encode(),
             b"[" * 3000,
             json.dumps(_chat(6, messages="ls")).encode(),
             json.dumps(_chat(7, messages=[{"role": "user", "content": [{"text": 5}]}])).encode(),
             json.dumps(bad_call).encode(),
             json.dumps(_chat(8)).encode(),
             json.dumps({**_chat(9), "id": "chat-1"}).encode(),  # a duplicate id
             json.dumps(_chat(10)).encode()[:-30]]  # cut, and no newline after it
    path.write_bytes(b"\n".join(lines))
    return 9


def _texts(path: Path) -> list[bytes]:
    """A written file's content in the forms a secret could hide in."""
    if path.name.endswith(".gz"):
        return [gzip.decompress(path.read_bytes())]
    if path.suffix == ".parquet":
        return [path.read_bytes(), json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False).encode()]
    return [path.read_bytes()]


def _leaks(root: Path, skip=()) -> list[str]:
    return [f"{p.relative_to(root)}: {s}" for p in sorted(root.rglob("*"))
            if p.is_file() and p not in skip for text in _texts(p) for s in SECRETS if s.encode() in text]


def _prepare(run_dir: Path, inputs: list[Path], *extra):
    cmd = [sys.executable, "-m", "launch.cli", "prepare", f"hydra.run.dir={run_dir}", *TINY,
           f"prepare.input={inputs[0]}", f"data.trajectories=[{','.join(map(str, inputs[1:]))}]",
           "data.domains=[terminal,mcp]", f"prepare.max_record_bytes={MAX_RECORD_BYTES}",
           "prepare.tasks=2", "prepare.workers=1", *extra]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"},
                          capture_output=True, text=True, timeout=600)


def test_hostile_input_is_quarantined_and_no_secret_is_written(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lwm")
    inputs_dir, run_dir = tmp_path / "in", tmp_path / "run"
    inputs_dir.mkdir()
    expect, n_valid = _write_inputs(inputs_dir)
    chat_log = inputs_dir / "chat.jsonl"
    n_chat_bad = _write_chat_log(chat_log)

    # lwm ingest: every hostile line one quarantined record, the rest converted
    summary = ingest(ingest_cfg("openai_chat", chat_log, domain="mcp"), RunPaths(run_dir))
    assert (summary["trajectories"], summary["quarantined"]) == (3, n_chat_bad)
    bad = [json.loads(line) for line in
           (run_dir / "ingest/quarantine/openai_chat.jsonl").read_text().splitlines()]
    assert len(bad) == n_chat_bad and all(b["reason"] and b["field"] for b in bad)
    reasons = " ".join(b["reason"] for b in bad)
    for reason in ("undecodable", "unencodable text", f"nested deeper than {MAX_DEPTH}", "duplicate id",
                   "invalid JSON", "malformed (TypeError"):
        assert reason in reasons, reason
    assert "records quarantined" in caplog.text and not [s for s in SECRETS if s in caplog.text]

    # lwm prepare over the run's ingest output and the hostile files
    names = ["mixed.jsonl", "empty.jsonl", "truncated.jsonl", "no_newline.jsonl"]
    res = _prepare(run_dir, [inputs_dir / n for n in names])
    assert res.returncode == 0, res.stderr[-3000:]
    assert not [s for s in SECRETS if s in res.stdout + res.stderr], "a secret on the console"
    out = run_dir / "prepare"
    manifest = json.loads((out / "manifest.json").read_text())
    r = manifest["records"]
    n_bad = sum(len(v) for v in expect.values())
    assert r["in"] == n_valid + n_bad + 3  # + the three ingested trajectories
    assert r["in"] == r["kept"] + r["quarantined"] + r["filtered"]
    assert r["quarantined"] == n_bad and r["filter_reasons"].get("duplicate id") == 1

    # each quarantined line: where it is (file, line, and the byte its line starts at) and why
    entries = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(entries) == n_bad
    for path, lines in expect.items():
        got = sorted((e for e in entries if e["file"] == path), key=lambda e: e["line"])
        said = [re.sub(r"\d+", "*", e["field"]) + f": {e['reason']}" for e in got]
        assert len(got) == len(lines) and all(re.match(want, s) for s, (_, want) in zip(said, lines)), \
            list(zip(said, [want for _, want in lines]))
        data = Path(path).read_bytes()
        for e, (raw, _) in zip(got, lines):
            assert data.count(b"\n", 0, e["offset"]) == e["line"] - 1
            assert e["offset"] == 0 or data[e["offset"] - 1:e["offset"]] == b"\n"
            assert data[e["offset"]:].startswith(raw)
    assert all(e["record"] is not None or "text" in e or "too long" in e["reason"] for e in entries)
    assert not any("raw" in e for e in entries)  # raw bytes only with prepare.quarantine_raw

    # nothing written holds a secret: not the outputs, the quarantine, the logs or the manifest
    assert not _leaks(run_dir)  # ingest's output included: it is redacted as it is written
    # the CPT shards, decoded: redacted text is there, the secrets are not
    from lwm.tokenizer import load_tokenizer
    tok = load_tokenizer(str(out / "tokenizer"))
    text = "".join(tok.decode(np.fromfile(p, dtype=np.int32).tolist())
                   for p in sorted((out / "cpt").glob("*.bin")) if not p.name.endswith("_lossmask.bin"))
    assert re.search(r"<[A-Z_]+>", text) and "\U0001F600" in text  # decoded for real: placeholders, the emoji
    assert not [s for s in SECRETS if s in text]


def test_nothing_valid_is_refused_with_a_redacted_reason(tmp_path):
    """No record survives: prepare stops saying why, and the first quarantined record it names
    is redacted as the quarantine is."""
    src = tmp_path / "bad.jsonl"
    src.write_bytes(json.dumps({"id": 1, "task": _all_secrets(0)}).encode() + b"\n" + b"\xe9\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    res = _prepare(tmp_path / "run", [src, tmp_path / "empty.jsonl"])
    assert res.returncode != 0
    assert "none of the 2 records" in res.stderr
    assert "line 1, field id: expected str, got int (the line starts at byte 0;" in res.stderr
    assert not [s for s in SECRETS if s in res.stdout + res.stderr]
    assert not _leaks(tmp_path / "run")


@pytest.mark.parametrize("raw,field,reason", [
    (b"caf\xe9", "<line>", "undecodable (byte 0xe9 at position 3 is not UTF-8)"),
    (b'{"a": "\\ud800"}', "<line>", "unencodable text (a lone surrogate, \\ud800)"),
    (b'{"a": "\\ud83d\\ude00"}', None, None),  # a surrogate pair is one character
    (b"[" * 100000, "<line>", f"nested deeper than {MAX_DEPTH} levels"),
    (b"1" * 5000, "<line>", "invalid JSON (an integer too long to convert)"),
    (b'{"a": 1', "<line>", "invalid JSON (Expecting ',' delimiter at column 8)"),
])
def test_parse_line_says_why(raw, field, reason):
    if reason is None:
        assert parse_line(raw) == {"a": "\U0001F600"}
        return
    with pytest.raises(TrajectoryError) as e:
        parse_line(raw, "f.jsonl", 3)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_jsonl_lines_reads_bytes_with_offsets_and_skips_long_lines_unheld(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n' + b"x" * 100 + b"\n\xe9\r\n{}")
    got = list(jsonl_lines(path, max_bytes=50))
    assert [(n, off) for n, off, _ in got] == [(1, 0), (4, 13), (5, 114), (6, 117)]
    assert got[0][2] == b'{"a": 1}\n' and got[3][2] == b"{}"
    assert isinstance(got[1][2], TrajectoryError) and got[1][2].reason == \
        "line too long (100 bytes, over the limit of 50)"
    assert got[2][2] == b"\xe9\r\n"


def test_quarantine_entry_is_redacted_unless_redaction_is_off_and_raw_only_on_request():
    from data_pipeline.engine import quarantine_entry
    from lwm.config import PrepareConfig
    rec = {"id": 1, "task": PLANTED[AWS] + " \ud800", "meta": {"deep": _nested(MAX_DEPTH + 5)}}
    raw = json.dumps(rec).encode() + b"\n"
    err = TrajectoryError("expected str, got int", "id", "f.jsonl", 3)
    entry = quarantine_entry(err, "f.jsonl", 3, 120, raw, rec, PrepareConfig())
    assert (entry["file"], entry["line"], entry["offset"], entry["field"]) == ("f.jsonl", 3, 120, "id")
    assert AWS not in json.dumps(entry) and "raw" not in entry
    assert entry["record"]["task"].endswith("\ufffd")  # a lone surrogate cannot be written
    json.dumps(entry, ensure_ascii=False).encode("utf-8")
    assert "nested deeper" in json.dumps(entry["record"]["meta"])  # elided below MAX_DEPTH
    # the line did not parse: its text, redacted (and its bytes, unredacted, only on request)
    bad = b"\xe9 " + PLANTED[EMAIL].encode() + b"\n"
    err = TrajectoryError("undecodable", "<line>", "f.jsonl", 4)
    entry = quarantine_entry(err, "f.jsonl", 4, 0, bad, None, PrepareConfig(quarantine_raw=True))
    assert entry["record"] is None and EMAIL not in entry["text"] and entry["text"].startswith("\ufffd ")
    assert base64.b64decode(entry["raw"]) == bad
    # prepare.redact=false: the quarantine is as unredacted as the outputs
    entry = quarantine_entry(err, "f.jsonl", 4, 0, bad, None, PrepareConfig(redact=False))
    assert EMAIL in entry["text"]


@pytest.mark.parametrize("line", [b'{"id": "caf\xe9"}', b'{"id": ', b'[1, 2]'])
def test_an_unreadable_decontamination_file_is_refused_by_name_and_line(tmp_path, line):
    from data_pipeline.curate.dedup import Decontaminator
    path = tmp_path / "terminal_test.jsonl"
    path.write_bytes(b'{"id": 1, "prompt": [], "response": []}\n' + line + b"\n")
    with pytest.raises(ValueError, match=rf"prepare.decontaminate: {re.escape(str(path))}, line 2 "):
        Decontaminator([path])


@pytest.mark.parametrize("action, name", [('{"function": "search"}', None), ('{"function": {"name": "a"}}', "a"),
                                          ('{"name": "b"}', "b"), ('["name"]', None), ('{"name": 5}', None)])
def test_tool_names_of_any_shape_are_read_or_none(action, name):
    from lwm.domains.tools import called_tool
    assert called_tool(action) == name
