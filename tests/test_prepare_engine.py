"""prepare on datatrove: kill-and-resume is byte-identical; the Slurm executor's job scripts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY, TRAJECTORIES

DATA_FILES = ("cpt/train.bin", "cpt/train.idx", "cpt/train_lossmask.bin", "cpt/heldout.bin",
              "train.jsonl", "heldout.jsonl", "quarantine.jsonl", "eval/terminal_test.jsonl",
              "tokenizer/tokenizer.json", "manifest.json")


def _prepare(run_dir: Path, *extra, wait=True, env=None):
    cmd = [sys.executable, "-m", "launch.cli", "prepare", f"hydra.run.dir={run_dir}", *TINY,
           f"prepare.input={TRAJECTORIES}", "prepare.tasks=4", "prepare.workers=1", *extra]
    env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _outputs(run_dir: Path) -> dict[str, bytes]:
    out = run_dir / "prepare"
    files = {f: (out / f).read_bytes() for f in DATA_FILES}
    for name in ("sft", "rl"):
        for part in sorted((out / name).glob("*.parquet")):
            files[f"{name}/{part.name}"] = part.read_bytes()
    return files


def test_killed_prepare_resumes_byte_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _prepare(whole)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = _prepare(killed, wait=False)
    deadline = time.time() + 300
    completions = lambda: list(killed.glob("prepare.work-*/logs/curate/completions/*"))  # noqa: E731
    while len(completions()) < 2 and time.time() < deadline:
        assert proc.poll() is None, "prepare finished before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "prepare" / "manifest.json").exists()
    resumed = _prepare(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # datatrove skipped the tasks that had completed (its log goes to a file, not the console)
    assert "Skipping" in (killed / "prepare.logs" / "datatrove.log").read_text()
    assert "Skipping" not in resumed.stderr and "prepare: 100%" in resumed.stderr
    a, b = _outputs(whole), _outputs(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    assert not list(killed.glob("prepare.work-*"))  # the work folder is cleaned up


def test_slurm_executor_renders_job_arrays(tmp_path):
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    # A stand-in for Slurm's sbatch (no cluster here): keeps each script, answers with a job id.
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\nn=$(ls " + str(scripts) + " | grep -c sh$)\n"
        "for last; do :; done\ncp \"$last\" " + str(scripts) + "/job$n.sh\n"
        "echo \"$@\" > " + str(scripts) + "/job$n.args\necho Submitted batch job $((100 + n))\n")
    (bin_dir / "sbatch").chmod(0o755)
    res = _prepare(tmp_path / "run", "prepare.executor=slurm", "prepare.slurm.partition=cpu",
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(scripts.glob("job*.sh"), key=lambda p: int(p.stem[3:]))
    # datatrove submits each stage as a job array running the pickled pipeline, plus a small
    # job merging its statistics.
    main = [p for p in jobs if "launch_pickled_pipeline" in p.read_text()]
    texts = [p.read_text() for p in main]
    names = [next(l for l in t.splitlines() if "--job-name" in l).split("=", 1)[1] for t in texts]
    assert names == ["lwm-prepare-curate", "lwm-prepare-check_curated", "lwm-prepare-duplicate_ids",
                     "lwm-prepare-minhash_buckets", "lwm-prepare-minhash_cluster", "lwm-prepare-tokenizer",
                     "lwm-prepare-render", "lwm-prepare-publish"]
    assert all("#SBATCH --partition=cpu" in t for t in texts)
    assert "#SBATCH --array=0-3" in texts[0] and "#SBATCH --array=0-13" in texts[3]
    ids = [100 + int(p.stem[3:]) for p in main]
    for i in range(1, len(main)):  # each stage waits for the previous one to succeed
        assert f"afterok:{ids[i - 1]}" in (scripts / f"{main[i].stem}.args").read_text()
    assert not (tmp_path / "run" / "prepare" / "manifest.json").exists()  # nothing ran locally


def test_render_streams_parquet_in_row_groups_with_the_same_rows(prepared_run, tmp_path):
    """A render task writes its SFT/RL rows a group at a time (flat memory); read back, the file
    holds exactly the rows in order, over several groups."""
    import pyarrow.parquet as pq

    from data_pipeline.prepare import RowSink
    rows = pq.read_table(sorted((prepared_run / "prepare" / "sft").glob("*.parquet"))[0]).to_pylist()
    assert len(rows) > 14
    sink = RowSink(tmp_path / "out.parquet", group_rows=7)
    for row in rows:
        sink.add(row)
    sink.close()
    f = pq.ParquetFile(tmp_path / "out.parquet")
    assert f.num_row_groups == -(-len(rows) // 7) and sink.count == len(rows)
    assert f.read().to_pylist() == rows


def test_prepare_steps_get_typed_configs_and_a_misspelt_key_fails_at_start_up(tmp_path):
    import pickle

    import pytest
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    from data_pipeline.prepare import prepare, typed
    from lwm.config import DataConfig, FilterConfig, PrepareConfig
    from lwm.tracking import RunPaths
    from tests.conftest import make_cfg
    cfg = make_cfg(tmp_path, f"prepare.input={TRAJECTORIES}")
    data, prep = typed(cfg.data, DataConfig), typed(cfg.prepare, PrepareConfig)
    assert isinstance(prep.filters, FilterConfig) and data.heldout_fraction == 0.15
    assert pickle.loads(pickle.dumps((data, prep))) == (data, prep)  # datatrove pickles its steps
    with pytest.raises(Exception, match="min_turn"):  # the CLI's config: Hydra refuses it
        make_cfg(tmp_path, "prepare.filters.min_turn=3")
    plain = OmegaConf.create(OmegaConf.to_container(cfg))  # a config built without the schema
    plain.prepare.filters.min_turn = 3
    with pytest.raises(ConfigKeyError, match="min_turn"):
        prepare(plain, RunPaths(tmp_path))
    assert not list(tmp_path.glob("prepare*"))  # refused before any work


def test_a_user_domain_from_config_reaches_the_workers(tmp_path, monkeypatch):
    """data.extra_domains registers in every process prepare's steps run in, not only in the
    launcher's: the render workers (forkserver) start with the built-in domains only."""
    import json

    import lwm.domains
    from data_pipeline.prepare import prepare
    from lwm.tracking import RunPaths
    from tests.conftest import make_cfg
    monkeypatch.setattr(lwm.domains, "_REGISTRY", dict(lwm.domains._REGISTRY))
    words = "amber basil cedar delta ember fjord gravel harbor iris juniper kelp lumen".split()
    path = tmp_path / "toy.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            steps = [{"action": f"{words[i]} {j}",
                      "observation": f"{words[(i + j) % 12]} says {i * j} {j}"} for j in range(3)]
            rec = {"id": f"toy-{i}", "domain": "toy", "source": "test", "steps": steps}
            f.write(json.dumps(rec) + "\n")
    cfg = make_cfg(tmp_path, f"prepare.input={path}", "prepare.tasks=2", "prepare.workers=2",
                   "prepare.dedup=false", "data.domains=[toy]")
    cfg.data.extra_domains = {"toy": "tests.test_domains:ToyDomain"}
    manifest = prepare(cfg, RunPaths(tmp_path))
    assert manifest["records"]["kept"] == 12 and manifest["domains"] == {"toy": 12}
    assert manifest["eval"].get("toy", 0) + manifest["sft"]["samples"] > 0


def test_shard_packer_writes_what_megatrons_builder_writes(tmp_path):
    """ShardPacker writes the indexed format itself (no megatron-core, so no torch, in render
    workers): byte for byte what IndexedDatasetBuilder writes for the same packed sequences,
    with the header and dtype codes of megatron-core and of the training reader."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from data_pipeline import indexed
    from data_pipeline.prepare import ShardPacker
    from lwm.train.data import INDEX_HEADER
    assert indexed.HEADER == INDEX_HEADER
    assert all(indexed.CODES[np.dtype(DType.dtype_from_code(d.value))] == d.value for d in DType)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 5000, int(n)).tolist() for n in rng.integers(1, 40, 30)]
    masks = [bytes(rng.integers(0, 2, len(d)).tolist()) for d in docs]
    packer = ShardPacker(tmp_path / "ours", 16, pad_id=0)
    for ids, mask in zip(docs, masks):
        packer.add(ids, mask)
    got = packer.finish()
    flat, flat_mask = sum(docs, []), b"".join(masks)
    pad = -len(flat) % 16
    flat, flat_mask = flat + [0] * pad, flat_mask + bytes(pad)
    ids = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.int32)
    mask = IndexedDatasetBuilder(str(tmp_path / "theirs_lossmask.bin"), dtype=np.uint8)
    for start in range(0, len(flat), 16):
        ids.add_document(np.array(flat[start:start + 16], dtype=np.int32), [16])
        mask.add_document(np.frombuffer(flat_mask[start:start + 16], dtype=np.uint8), [16])
    ids.finalize(str(tmp_path / "theirs.idx"))
    mask.finalize(str(tmp_path / "theirs_lossmask.idx"))
    for suffix in (".bin", ".idx", "_lossmask.bin", "_lossmask.idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes(), suffix
    assert got == {"sequences": len(flat) // 16, "tokens": len(flat), "real_tokens": len(flat) - pad}


def test_record_dict_is_what_asdict_gives():
    """Curate keeps each record as Trajectory.to_dict() (no deep copy): it must stay what
    dataclasses.asdict gives, fields in order, or train.jsonl would change."""
    import json
    from dataclasses import asdict

    from lwm.schema import Trajectory
    for line in Path(TRAJECTORIES).read_text().splitlines()[:20]:
        traj = Trajectory.from_dict(json.loads(line))
        want = asdict(traj)
        assert traj.to_dict() == want and list(traj.to_dict()) == list(want)
        assert traj.to_json() == json.dumps(want, ensure_ascii=False)


def test_indented_json_is_json_dumps_with_indent():
    """render_action's indented_json writes what json.dumps(indent=2, ensure_ascii=False) writes
    for any value json.loads gives: nesting, empty containers, non-ASCII, escapes, NaN and
    infinities, big and negative numbers; and every action of the test trajectories."""
    import json

    from lwm.domains.base import indented_json
    from lwm.schema import load_trajectories
    texts = ['[{"keystrokes": "ls -la\\n", "duration": 0.5}]', "[]", "{}", "[[], {}, [[{}]]]",
             '{"a": {"b": [1, -2.5, 1e100, -0.0, 12345678901234567890123]}, "": null}',
             '{"k": [true, false, NaN, Infinity, -Infinity], "s": "caf\\u00e9 \\u2028 \\ud800 \\u0000 \\"q\\" \\\\"}',
             '"just a string"', "3", "null"]
    texts += [s.action for t in load_trajectories(TRAJECTORIES) for s in t.steps]
    for text in texts:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            continue
        assert indented_json(value) == json.dumps(value, ensure_ascii=False, indent=2), text
