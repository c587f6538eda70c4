"""Prepared data verified where it is read, with the faults injected: truncated and missing CPT
shards, a deleted or damaged parquet shard, a starting checkpoint with its own tokenizer, a
killed prepare's workers, and the task count, which must not move the split or the vocabulary."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.prepare import prepare
from lwm.identity import tokenizer_fingerprint
from lwm.tracking import RunPaths
from tests.conftest import TINY, TRAJECTORIES, make_cfg

SEQ_LEN = 256  # data.seq_len in TINY


def _cut(path: Path, nbytes: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - nbytes)


def _rewrite_without_last_sequence(prefix: Path) -> None:
    """The shards (and their loss mask) rewritten whole and consistent, one sequence short: only
    the manifest's counts can tell."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    for p, dtype in ((prefix, np.int32), (Path(f"{prefix}_lossmask"), np.uint8)):
        rows = [np.array(r) for r in IndexedDataset(str(p))][:-1]
        for ext in ("bin", "idx"):
            Path(f"{p}.{ext}").unlink()
        builder = IndexedDatasetBuilder(f"{p}.bin", dtype=dtype)
        for r in rows:
            builder.add_document(r.astype(dtype), [len(r)])
        builder.finalize(f"{p}.idx")


CPT_FAULTS = {
    "truncated idx": (lambda c: _cut(c / "train.idx", 5), r"train\.idx: \d+ bytes, expected"),
    "bin missing its last sequence": (lambda c: _cut(c / "train.bin", SEQ_LEN * 4),
                                      r"train\.bin: \d+ bytes, but train\.idx counts"),
    "truncated loss mask": (lambda c: _cut(c / "train_lossmask.bin", 1), r"train_lossmask\.bin: \d+ bytes"),
    "loss mask index deleted": (lambda c: (c / "train_lossmask.idx").unlink(),
                                r"train_lossmask\.idx not found"),
    "fewer sequences than the manifest": (lambda c: _rewrite_without_last_sequence(c / "train"),
                                          r"train\.idx: \d+ sequences .*manifest\.json records"),
}


@pytest.mark.parametrize("fault", list(CPT_FAULTS))
def test_damaged_cpt_shards_are_refused_at_open_naming_the_file(run_copy, fault):
    from lwm.train.data import PackedShards
    cpt = run_copy / "prepare" / "cpt"
    intact = PackedShards(cpt / "train", 0, 0)
    manifest = json.loads((run_copy / "prepare" / "manifest.json").read_text())
    assert intact.n == manifest["cpt"]["train"]["sequences"]
    del intact  # its memory maps
    damage, message = CPT_FAULTS[fault]
    damage(cpt)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        PackedShards(cpt / "train", 0, 0)
    assert "rerun `lwm prepare`" in str(e.value)


@pytest.fixture(scope="module")
def prepared3(tmp_path_factory):
    """A prepared run in three tasks: three SFT and three RL shards."""
    root = tmp_path_factory.mktemp("run3")
    prepare(_cfg3(root), RunPaths(root))
    return root


def _cfg3(root: Path, *extra):
    return make_cfg(root, f"prepare.input={TRAJECTORIES}", "prepare.tasks=3", "prepare.workers=1", *extra)


def _snapshot(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "metrics.json"}


SHARD_FAULTS = {
    "deleted": (lambda s: s.unlink(), "part-00001.parquet is missing"),
    "truncated": (lambda s: _cut(s, 100), r"part-00001.parquet has \d+ bytes, \d+ were written"),
    "one added": (lambda s: shutil.copyfile(s, s.with_name("part-00009.parquet")),
                  "part-00009.parquet was not written by this stage"),
}


@pytest.mark.parametrize("fault", list(SHARD_FAULTS))
def test_a_damaged_parquet_shard_is_refused_and_prepare_redoes_it(prepared3, tmp_path, fault):
    run = tmp_path / "run"
    shutil.copytree(prepared3, run)
    before = _snapshot(run / "prepare")
    assert len(RunPaths(run).shards("sft")) == 3
    damage, message = SHARD_FAULTS[fault]
    damage(run / "prepare" / "sft" / "part-00001.parquet")
    with pytest.raises(FileNotFoundError, match=message) as e:
        RunPaths(run).shards("sft")
    assert "Rerun `lwm prepare`" in str(e.value)
    assert len(RunPaths(run).shards("rl")) == 3  # the other shards are whole
    prepare(_cfg3(run), RunPaths(run))  # not "up to date": prepared again, the same bytes
    assert _snapshot(run / "prepare") == before
    assert len(RunPaths(run).shards("sft")) == 3


def test_prepare_redoes_an_output_of_the_same_size_and_other_content(prepared3, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prepared3, run)
    before, written = _snapshot(run / "prepare"), (run / "prepare" / "manifest.json").stat().st_mtime_ns
    prepare(_cfg3(run), RunPaths(run))  # up to date: nothing redone
    assert (run / "prepare" / "manifest.json").stat().st_mtime_ns == written
    path = run / "prepare" / "cpt" / "train.bin"
    data = bytearray(path.read_bytes())
    data[SEQ_LEN * 4 + 8] ^= 1  # one flipped bit: sizes agree, the content hash does not
    path.write_bytes(bytes(data))
    prepare(_cfg3(run), RunPaths(run))
    assert _snapshot(run / "prepare") == before


def test_prepare_uses_the_starting_checkpoints_tokenizer(run_copy, tmp_path):
    """With cpt.init (or model.path) set and data.tokenizer empty, prepare tokenizes with the
    checkpoint's tokenizer (not a new one: CPT would train on ids of another vocabulary), records
    its fingerprint, and a prepare done with another tokenizer is not reused."""
    from lwm.tokenizer import load_tokenizer, train_tokenizer
    ckpt = tmp_path / "ckpt"
    train_tokenizer([f"step {i}: ls -la /tmp/dir{i}; echo done {i * 7}" for i in range(200)], 300, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"weights")  # not a tokenizer file: not copied
    (ckpt / "config.json").write_text("{}")
    trained = json.loads((run_copy / "prepare" / "manifest.json").read_text())["tokenizer"]
    assert trained["fingerprint"] == tokenizer_fingerprint(run_copy / "prepare" / "tokenizer")

    manifest = prepare(make_cfg(run_copy, f"prepare.input={TRAJECTORIES}", f"cpt.init={ckpt}"),
                       RunPaths(run_copy))
    out = run_copy / "prepare"
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(ckpt) != trained["fingerprint"]
    assert manifest["tokenizer"]["source"] == f"the starting checkpoint {ckpt} (cpt.init)"
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    assert not (out / "tokenizer" / "model.safetensors").exists()
    vocab = len(load_tokenizer(ckpt))
    assert manifest["tokenizer"]["vocab_size"] == vocab
    ids = np.fromfile(out / "cpt" / "train.bin", dtype=np.int32)
    assert ids.max() < vocab

    # model.path with the same tokenizer: the same prepare; no tokenizer in the checkpoint: refused
    again = prepare(make_cfg(run_copy, f"prepare.input={TRAJECTORIES}", f"model.path={ckpt}"),
                    RunPaths(run_copy))
    assert again["fingerprint"] == manifest["fingerprint"]
    given = prepare(make_cfg(run_copy, f"prepare.input={TRAJECTORIES}", f"data.tokenizer={ckpt}"),
                    RunPaths(run_copy))  # named: used where it is, and recorded the same way
    assert given["tokenizer"] == {**manifest["tokenizer"], "source": str(ckpt)}
    assert not (out / "tokenizer").exists()
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=r"bare \(model.path\) has no tokenizer.json.*data.tokenizer"):
        prepare(make_cfg(run_copy, f"prepare.input={TRAJECTORIES}", f"model.path={tmp_path / 'bare'}"),
                RunPaths(run_copy))


def _children() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> dict[int, int]:
    """pid -> parent pid of every process below `pid`."""
    parents, found, frontier = _children(), {}, {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found.keys()
        found.update({p: parents[p] for p in frontier})
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the death signal is Linux's")
def test_killed_prepare_takes_its_workers_with_it(tmp_path):
    cmd = [sys.executable, "-m", "launch.cli", "prepare", f"hydra.run.dir={tmp_path / 'run'}", *TINY,
           f"prepare.input={TRAJECTORIES}", "prepare.tasks=4", "prepare.workers=2"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        # datatrove's Manager, the forkserver, multiprocess's resource tracker, and the pool's
        # workers: children of the forkserver, not of prepare
        workers = {}
        while set(workers.values()) <= {proc.pid}:
            assert proc.poll() is None and time.time() < deadline, "prepare ended before it had workers"
            time.sleep(0.02)
            workers = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # prepare alone, as a scheduler or the OOM killer would
        proc.wait()
        deadline = time.time() + 30
        while any(map(_alive, workers)) and time.time() < deadline:
            time.sleep(0.1)
        survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in workers if _alive(p)}
        assert not survivors, "processes outlived the killed prepare"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever survived, so it does not outlive the test
        except ProcessLookupError:
            pass


def test_split_and_tokenizer_do_not_depend_on_the_task_count(tmp_path):
    """Records 1..8 appear twice (the copy later in the input, under another id): dedup keeps the
    first in the input in any task layout, so the split and the trained tokenizer (here on the
    first 12 train trajectories) are the same for 1 and 3 tasks."""
    lines = [json.loads(line) for line in TRAJECTORIES.read_text().splitlines()]
    src = tmp_path / "dups.jsonl"
    with open(src, "w") as f:
        for rec in lines + [{**lines[k], "id": lines[k]["id"] + "-copy"} for k in range(1, 9)]:
            f.write(json.dumps(rec) + "\n")
    runs = {}
    for tasks in (1, 3):
        root = tmp_path / f"tasks{tasks}"
        cfg = make_cfg(root, f"prepare.input={src}", f"prepare.tasks={tasks}", "prepare.workers=1",
                       "prepare.tokenizer_sample=12")
        manifest = prepare(cfg, RunPaths(root))
        assert manifest["records"]["filter_reasons"]["duplicate"] == 8
        split = {s: sorted(json.loads(line)["id"] for line in open(root / "prepare" / f"{s}.jsonl"))
                 for s in ("train", "heldout")}
        runs[tasks] = split, (root / "prepare" / "tokenizer" / "tokenizer.json").read_bytes(), manifest
    assert runs[1][0] == runs[3][0]
    assert not any(i.endswith("-copy") for ids in runs[1][0].values() for i in ids)  # the first kept
    assert runs[1][1] == runs[3][1]
    assert runs[1][2]["tokenizer"]["fingerprint"] == runs[3][2]["tokenizer"]["fingerprint"]
