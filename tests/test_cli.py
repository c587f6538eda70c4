"""The `lwm` command as a user meets it first: help that exits 0, a config that prints fully
resolved, and docs whose paths and commands exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "architecture.md"]
TOP = ("lwm/", "data_pipeline/", "pretrain/", "sft/", "rl/", "eval/", "serve/", "launch/", "configs/",
       "tests/", "bench/", "docs/", "scripts/", "slurm/", "examples/")


def lwm(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_lists_every_command(flag):
    from launch.stages import COMMANDS
    res = lwm(flag)
    assert res.returncode == 0, res.stderr
    assert all(f"\n  {name} " in res.stdout for name in COMMANDS)


def test_an_unknown_command_is_named():
    res = lwm("trian")
    assert res.returncode == 2 and "unknown command 'trian'" in res.stderr


def test_the_resolved_config_prints_every_value():
    res = lwm("cpt", "--cfg", "job", "--resolve", "run_name=printed")
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = yaml.safe_load(res.stdout)
    assert cfg["run_dir"] == "runs/printed" and cfg["stage"] == "cpt"
    assert "${" not in res.stdout and "???" not in res.stdout


def _doc_paths(text: str) -> set[str]:
    """Files of the repository the text names: code, configs and docs (folders and names like
    `eval/report.md` may be a run's outputs: stages and run folders share names)."""
    paths = set()
    for token in re.findall(r"[`\s(]((?:%s)[A-Za-z0-9_./*-]*)" % "|".join(map(re.escape, TOP)), text):
        token = token.rstrip(".,:;)")
        code = token.endswith((".py", ".sh", ".tmpl", ".toml")) or re.match(r"(configs/.*\.yaml|docs/.*\.md)$", token)
        if code and "*" not in token and "<" not in token:
            paths.add(token)
    return paths


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_and_module_the_docs_name_exists(doc):
    text = doc.read_text()
    missing = sorted(p for p in _doc_paths(text) if not (ROOT / p).exists())
    assert missing == [], f"{doc.name} names paths that do not exist: {missing}"
    modules = set(re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text)) - {"pytest"}
    sys.path.insert(0, str(ROOT))
    try:
        absent = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    finally:
        sys.path.remove(str(ROOT))
    assert absent == [], f"{doc.name} runs modules that do not exist: {absent}"
    assert "../" not in re.sub(r"```.*?```", "", text, flags=re.S), f"{doc.name} points outside the repository"


# --- help that answers: every key documented, mistakes answered in one line ---------------------

def cli(capsys, *args) -> tuple[int, str, str]:
    """`lwm ARGS` in this process, for what the CLI answers before composing a config."""
    from launch.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_every_schema_key_has_a_meaning_read_from_the_comment_beside_its_field():
    from launch.keys import schema_keys
    keys = schema_keys()
    assert [k for k, v in keys.items() if not v.meaning] == []
    assert keys["sft.lr"].meaning == "peak learning rate"  # TrainConfig's comment, inherited
    assert keys["sft.batch_size"].meaning.startswith("packed rows")  # SftConfig's own wins
    assert keys["backend.megatron.tensor_parallel"].type == "int"  # nested from parallel_config.py


def test_main_help_lists_commands_and_config_groups_one_line_each(capsys):
    from launch.keys import groups
    from launch.stages import COMMANDS
    from launch.usage import COMMANDS as DESCRIBED
    assert list(DESCRIBED) == list(COMMANDS)
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    section = out.split("config groups")[1].split("after the command")[0].splitlines()
    for group, presets in groups().items():
        line = next(x for x in section if x.startswith(f"  {group} "))
        assert len(line.split()) > 3, line  # a meaning
        assert presets[0] in line or f"({len(presets)} presets)" in line, line
    assert all(f"\n  {name} " in out for name in COMMANDS)


def test_stage_help_lists_the_keys_the_stage_reads_with_type_default_and_meaning(capsys):
    code, out, _ = cli(capsys, "sft", "--help", "model=qwen3_5_35b_a3b", "sft.lr=3e-4")
    assert code == 0
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in out.splitlines()
            if line.startswith("  ") and len(line.split()) >= 4}
    assert rows["sft.lr"][:2] == ["float", "0.0003"] and "learning rate" in rows["sft.lr"][2]
    assert rows["model.hidden_size"][:2] == ["int", "2048"]  # the preset's value, as it would run
    for key in ("data.seq_len", "backend.name", "sft.teacher.judge.base_url", "run_name", "seed"):
        assert key in rows, key
    assert not any(k.startswith(("rl.", "cpt.", "policy.")) for k in rows)
    assert "backend.megatron.*: 21 keys, read when backend.name is megatron" in out  # folded
    assert "backend.megatron.tensor_parallel" in cli(capsys, "cpt", "--help", "backend=megatron")[1]


@pytest.mark.parametrize("args, says", [
    (["sfft"], "unknown command 'sfft'; did you mean sft?"),
    (["sft", "sft.lrr=1e-4"], "unknown key 'sft.lrr'; did you mean sft.lr?"),
    (["sft", "sft.lrr=1e-4", "--dry-run"], "unknown key 'sft.lrr'; did you mean sft.lr?"),
    (["sft", "+sft.lr=1e-4"], "drop the '+' (sft.lr=1e-4)"),
    (["sft", "+sft.lrr=1e-4"], "unknown key 'sft.lrr' ('+' cannot add keys to the typed config); "
                               "did you mean sft.lr?"),
    (["sft", "sft.num_generations=2"], "did you mean rl.num_generations?"),
    (["cpt", "model=tiny_mo", "--dry-run"], "unknown preset model=tiny_mo; did you mean model=tiny_moe?"),
])
def test_mistakes_are_answered_in_one_line_with_the_closest_name(capsys, args, says):
    code, out, err = cli(capsys, *args)
    assert code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_plus_still_adds_entries_to_user_keyed_dicts(capsys):
    from launch.keys import check_overrides
    check_overrides("prepare", ["+data.mixture.web=2", "cluster.env.NCCL_DEBUG=INFO", "hydra.job.chdir=false",
                                "hydra/launcher=submitit_local", "sft.lr=1e-4,2e-4", "~sft.init"])


def test_a_dry_run_with_a_wrong_type_is_one_message_not_a_traceback():
    res = lwm("sft", "sft.lr=abc", "--dry-run")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "sft.lr=abc" in res.stderr and "could not be converted to Float" in res.stderr


@pytest.mark.parametrize("stage, says", [
    ("prepare", "no trajectories at runs/empty/collect/trajectories.jsonl or runs/empty/ingest/*.jsonl: "
                "run `lwm collect run_name=empty` (or `lwm ingest ...`) first (or set prepare.input=..."),
    ("cpt", "no CPT shards at runs/empty/prepare/cpt/train.bin: run `lwm prepare run_name=empty` first"),
    ("sft", "no CPT model (sft starts from it) at runs/empty/cpt/final: run `lwm cpt run_name=empty` "
            "first (or set sft.init=...)"),
    ("rl", "no SFT model (rl starts from it) at runs/empty/sft/final: run `lwm sft run_name=empty` first "
           "(or set rl.init=...)"),
    ("eval", "no trained model to score at runs/empty/rl/final or runs/empty/sft/final or "
             "runs/empty/cpt/final: run `lwm cpt run_name=empty`"),
])
def test_a_missing_upstream_output_names_the_folder_and_the_command(tmp_path, monkeypatch, stage, says):
    from omegaconf import OmegaConf

    from launch.upstream import MissingInput, check
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs" / "empty"
    root.mkdir(parents=True)
    cfg = OmegaConf.create({"run_name": "empty", "prepare": {"input": ""}, "data": {"trajectories": []},
                            "sft": {"init": ""}, "rl": {"init": ""},
                            "eval": {"input": "", "checkpoint": "", "endpoint": {"base_url": ""}}})
    with pytest.raises(MissingInput) as err:
        check(stage, cfg, root)
    assert says in str(err.value)
    (root / "cpt" / "final").mkdir(parents=True)
    (root / "cpt" / "final" / "config.json").write_text("{}")
    (root / "prepare" / "sft").mkdir(parents=True)
    (root / "prepare" / "sft" / "part-00000.parquet").write_text("")
    check("sft", cfg, root)  # both inputs there: nothing to say
    cfg.rl.init = str(tmp_path / "nowhere")
    with pytest.raises(MissingInput, match="rl.init=.*nowhere does not exist"):
        check("rl", cfg, root)


def test_the_cli_says_which_stage_to_run_before_the_stage_starts(tmp_path):
    res = lwm("sft", f"hydra.run.dir={tmp_path}", "wandb.mode=disabled")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"lwm sft: no CPT model (sft starts from it) at {tmp_path}/cpt/final: run `lwm cpt " \
           f"hydra.run.dir={tmp_path}` first (or set sft.init=...)" in res.stderr
    assert not (tmp_path / "sft").exists()  # refused before the stage recorded anything


def test_a_sweep_job_names_its_missing_input_without_a_traceback(tmp_path):
    res = lwm("sft", "-m", "sft.lr=1e-4,1e-3", f"hydra.sweep.dir={tmp_path}", "run_name=nothing_here",
              "wandb.mode=disabled")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    # the jobs read what they do not run from the base run beside the sweep folder
    assert "sweep job 0 (stage=sft sft.lr=0.0001 " in res.stderr
    assert f"run `lwm prepare run_name=nothing_here hydra.run.dir={tmp_path.parent / 'nothing_here'}` first" \
        in res.stderr and "reuse.prepare=..." in res.stderr


def test_the_commands_in_the_docs_pass_the_override_check():
    """Every `lwm STAGE KEY=VALUE ...` the docs show names keys and presets that exist."""
    import shlex

    from launch.keys import check_overrides
    from launch.stages import COMMANDS
    checked = 0
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            m = re.search(r"(?:^|`)lwm (\w+)((?: [^`#]*)?)", line)
            if not m or m.group(1) not in COMMANDS or "<" in m.group(2) or "..." in m.group(2):
                continue
            check_overrides(m.group(1), [a for a in shlex.split(m.group(2).replace("\\", ""))
                                         if "=" in a and not a.startswith("-")])
            checked += 1
    assert checked > 20


def test_the_launcher_tables_name_commands_and_keys_that_exist():
    from launch import upstream, usage
    from launch.keys import schema_keys
    from launch.stages import COMMANDS
    keys = schema_keys()
    assert set(usage.SECTIONS) | {"run"} == set(COMMANDS) and set(upstream.READS) <= set(COMMANDS)
    assert all(p in keys for prefixes in usage.SECTIONS.values() for p in prefixes)
    assert all(k in keys for inputs in upstream.READS.values() for i in inputs for k in i.instead)
    assert all(i.writer in COMMANDS for inputs in upstream.READS.values() for i in inputs)
