"""The TRL stages (`lwm sft`, `lwm rl`) killed with SIGKILL mid-step, mid-save and between their
final writes: the rerun ends bitwise where an uninterrupted run ends, with the metrics of the
whole run. The kill points are exact (tests/helpers/training.py: killed)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lwm.train.trl import load_weights, resume_arg
from tests.conftest import make_cfg
from tests.helpers.endpoints import exact_judge, serve, stop
from tests.helpers.training import fresh, killed, trained, weights

SFT = ["backend=hf", "sft.grad_accum=2"]  # 4 steps of 2 micro-batches, checkpoints at 2 and 4
DEEPSPEED = ["backend=deepspeed", "backend.deepspeed.zero_stage=2", "sft.grad_accum=2"]
RL_STEPS = ["rl.max_steps=4", "rl.save_every=2", "rl.log_every=1", "rl.batch_size=4", "rl.num_generations=4",
            "rl.max_completion_length=8", "rl.lr=1e-3", "rl.warmup_steps=0", "backend.num_threads=1",
            "backend.dtype=float32"]


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the uninterrupted run: {differ[:4]}"


def metrics(run: Path, stage: str = "sft") -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sft_whole(prepared_run, sft_init, tmp_path_factory):
    run = fresh(prepared_run, tmp_path_factory.mktemp("sft_whole"))
    trained("sft", run, sft_init, *SFT)
    return run


@pytest.fixture(scope="module")
def judge():
    server = serve(exact_judge)
    yield server.url
    stop(server)


def rl_steps(judge: str, backend: tuple[str, ...] = ("backend=hf",)) -> list[str]:
    return [*RL_STEPS, *backend, f"rl.judge.base_url={judge}", "rl.judge.max_retries=0"]


@pytest.fixture(scope="module")
def rl_whole(prepared_run, sft_init, tmp_path_factory, judge):
    run = fresh(prepared_run, tmp_path_factory.mktemp("rl_whole"))
    trained("rl", run, sft_init, steps=rl_steps(judge))
    return run


# --- which checkpoint to resume, and loading all of it (no training) -------------------------

def _checkpoint(folder: Path, step: int, drop: str = "") -> Path:
    """A Trainer checkpoint-N folder as _save_checkpoint leaves it, less the file `drop`."""
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if drop:
        (folder / drop).unlink()
    return folder


@pytest.mark.parametrize("drop", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                  "trainer_state.json"])
def test_auto_resume_passes_over_a_checkpoint_cut_short(tmp_path, caplog, drop):
    good = _checkpoint(tmp_path / "checkpoint-9", 9)
    torn = _checkpoint(tmp_path / "checkpoint-10", 10, drop)
    with caplog.at_level(logging.WARNING, logger="lwm.train"):
        assert resume_arg("auto", tmp_path) == str(good)
    assert str(torn) in caplog.text and drop in caplog.text
    with pytest.raises(ValueError, match=f"incomplete checkpoint.*{drop}"):
        resume_arg(str(torn), tmp_path)
    assert resume_arg(str(good), tmp_path) == str(good)


def test_auto_resume_with_only_torn_checkpoints_starts_over(tmp_path, caplog):
    _checkpoint(tmp_path / "checkpoint-2", 2, "trainer_state.json")
    (tmp_path / "checkpoint-4").mkdir()  # killed before its first file
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    with caplog.at_level(logging.WARNING, logger="lwm.train"):
        assert resume_arg("auto", tmp_path) is None
    assert "no complete checkpoint" in caplog.text and "unreadable" in caplog.text
    assert resume_arg("auto", tmp_path / "none") is None and resume_arg("never", tmp_path) is None


def test_a_deepspeed_checkpoint_needs_its_engine_files(tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint-2", 2)
    (ckpt / "optimizer.pt").unlink()  # DeepSpeed keeps it in its engine checkpoint
    (ckpt / "global_step2").mkdir()
    assert resume_arg("auto", tmp_path) is None  # no `latest`: cut short
    (ckpt / "latest").write_text("global_step2")
    (ckpt / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert resume_arg("auto", tmp_path) == str(ckpt)


def test_load_weights_loads_the_experts_or_names_the_file(prepared_run, sft_init, tmp_path):
    from lwm.models.hf import build_model, load_model
    model = build_model(make_cfg(prepared_run).model, 512)  # another init than sft_init's
    load_weights(model, sft_init)
    expected = load_model(sft_init).state_dict()
    assert any(".experts." in k for k in expected)
    assert_identical(expected, model.state_dict())

    ckpt = tmp_path / "ckpt"
    load_model(sft_init).save_pretrained(ckpt)
    tensors = load_file(ckpt / "model.safetensors")
    del tensors[next(k for k in tensors if ".experts.1.gate_proj" in k)]
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"cannot load every weight of {ckpt / 'model.safetensors'}"):
        load_weights(model, ckpt)


# --- SFT, backend=hf ------------------------------------------------------------------------------

def test_sft_killed_mid_step_resumes_every_weight(sft_whole, prepared_run, sft_init, tmp_path):
    """The Trainer's own resume dropped the MoE experts (strict=False) and trained on from the
    starting ones: every tensor ended different."""
    run = fresh(prepared_run, tmp_path)
    killed("sft", run, sft_init, "microstep:6", *SFT)  # step 3's second micro-batch
    assert (run / "sft" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (run / "sft" / "checkpoints" / "checkpoint-4").exists()
    trained("sft", run, sft_init, *SFT)
    assert_identical(weights(sft_whole), weights(run))
    got, whole = metrics(run), metrics(sft_whole)
    assert (got["steps"], got["train_loss_first"], got["train_loss_last"]) == \
        (whole["steps"], whole["train_loss_first"], whole["train_loss_last"])


@pytest.mark.parametrize("cut", ["model.safetensors", "trainer_state.json"])
def test_sft_killed_mid_save_resumes_the_last_complete_checkpoint(sft_whole, prepared_run, sft_init, tmp_path, cut):
    """A kill while checkpoint-4 is written (before its weights, or before its trainer state, the
    last file) made every rerun fail: "Can't find a valid checkpoint" / no trainer_state.json."""
    run = fresh(prepared_run, tmp_path)
    killed("sft", run, sft_init, f"write:*/checkpoint-4/{cut}", *SFT)
    assert (run / "sft" / "checkpoints" / "checkpoint-4").is_dir()
    trained("sft", run, sft_init, *SFT)
    assert_identical(weights(sft_whole), weights(run))
    assert metrics(run)["train_loss_first"] == metrics(sft_whole)["train_loss_first"]


@pytest.mark.parametrize("cut", ["sft/final/model.safetensors", "sft/metrics.tmp", "sft/final/complete"])
def test_sft_killed_between_final_writes_redoes_them(sft_whole, prepared_run, sft_init, tmp_path, cut):
    """final/ weights, then metrics.json, then the `complete` marker: a kill between two of them
    leaves no marker, and the rerun writes all three again. The marker used to come before
    metrics.json, so a kill between them left a run that was "already trained" with no metrics."""
    run = fresh(prepared_run, tmp_path)
    killed("sft", run, sft_init, f"write:*/{cut}", *SFT)
    assert not (run / "sft" / "final" / "complete").exists()
    trained("sft", run, sft_init, *SFT)
    assert (run / "sft" / "final" / "complete").exists()
    assert_identical(weights(sft_whole), weights(run))
    assert metrics(run)["train_loss_last"] == metrics(sft_whole)["train_loss_last"]


def test_sft_with_more_steps_trains_on(sft_whole, sft_init, tmp_path):
    """max_steps may grow between runs (launch/identity.py: MAY_CHANGE): the finished stage trains
    on from its last checkpoint instead of reporting the old run as "already trained"."""
    run = tmp_path / "run"
    shutil.copytree(sft_whole, run)
    got = trained("sft", run, sft_init, *SFT, "sft.max_steps=6")
    assert got["steps"] == 6 and (run / "sft" / "final" / "complete").exists()
    assert got["train_loss_first"] == metrics(sft_whole)["train_loss_first"]  # the whole run's history
    before, after = weights(sft_whole), weights(run)
    assert all(not torch.equal(before[k], after[k]) for k in before if ".experts." in k)


# --- SFT, backend=deepspeed -----------------------------------------------------------------------

def test_deepspeed_sft_killed_mid_save_resumes_exactly(prepared_run, sft_init, tmp_path):
    whole = fresh(prepared_run, tmp_path / "whole")
    trained("sft", whole, sft_init, *DEEPSPEED)
    run = fresh(prepared_run, tmp_path / "killed")
    killed("sft", run, sft_init, "write:*/checkpoint-4/global_step4/*optim_states.pt", *DEEPSPEED)
    trained("sft", run, sft_init, *DEEPSPEED)
    assert_identical(weights(whole), weights(run))


# --- RL, backend=hf, with a judge -----------------------------------------------------------------

@pytest.mark.parametrize("at", ["microstep:3", "write:*/checkpoint-4/trainer_state.json"])
def test_rl_killed_resumes_exactly_and_counts_the_whole_run(rl_whole, prepared_run, sft_init, tmp_path, judge, at):
    """The reward counts lived in memory: after a resume, judge calls and scored completions
    counted only the last segment."""
    expected = metrics(rl_whole, "rl")
    assert expected["scored_completions"] == 16 and expected["judge_calls"] == 16  # 4 a step
    run = fresh(prepared_run, tmp_path)
    killed("rl", run, sft_init, at, steps=rl_steps(judge))
    got = trained("rl", run, sft_init, steps=rl_steps(judge))
    for key in ("scored_completions", "judge_calls", "judge_failed", "guard_flagged", "reward_curve", "steps"):
        assert got[key] == expected[key], key
    assert_identical(weights(rl_whole, "rl"), weights(run, "rl"))


def test_gspo_killed_inside_a_generation_block_resumes_exactly(prepared_run, sft_init, tmp_path, judge):
    """GSPO's one generation serves all 4 steps (steps_per_generation = 4 x grad_accum). Killed at
    step 3, the run resumes from checkpoint-2 inside that block: before the generation buffer was
    checkpointed, it generated again (32 judge calls instead of 16, other completions, other weights)."""
    steps = [*rl_steps(judge), "rl.algorithm=gspo"]
    whole = fresh(prepared_run, tmp_path / "whole")
    expected = trained("rl", whole, sft_init, steps=steps)
    assert expected["judge_calls"] == 16  # one generation of 4 prompts x 4 completions
    run = fresh(prepared_run, tmp_path / "killed")
    killed("rl", run, sft_init, "microstep:3", steps=steps)
    assert (run / "rl" / "checkpoints" / "checkpoint-2" / "generation_buffer_0.pt").exists()
    got = trained("rl", run, sft_init, steps=steps)
    for key in ("scored_completions", "judge_calls", "reward_curve", "steps"):
        assert got[key] == expected[key], key
    assert_identical(weights(whole, "rl"), weights(run, "rl"))


def test_deepspeed_rl_killed_mid_save_resumes_exactly(prepared_run, sft_init, tmp_path, judge):
    steps = rl_steps(judge, ("backend=deepspeed", "backend.deepspeed.zero_stage=2"))
    whole = fresh(prepared_run, tmp_path / "whole")
    expected = trained("rl", whole, sft_init, steps=steps)
    run = fresh(prepared_run, tmp_path / "killed")
    killed("rl", run, sft_init, "write:*/checkpoint-4/global_step4/*optim_states.pt", steps=steps)
    got = trained("rl", run, sft_init, steps=steps)
    assert (got["backend"], got["scored_completions"], got["judge_calls"]) == ("deepspeed", 16, 16)
    assert got["reward_curve"] == expected["reward_curve"]
    assert_identical(weights(whole, "rl"), weights(run, "rl"))
