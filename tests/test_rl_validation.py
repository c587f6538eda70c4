"""RL's held-out check (rl/validation.py): prompts kept out of training are scored before and
after RL, and rl.keep_best keeps the starting weights unless RL's score higher there."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
import torch
from safetensors.torch import load_file

from launch.stages import _stage_fn
from lwm.tracking import RunPaths
from rl import validation
from tests.conftest import make_cfg

STEPS = ["rl.max_steps=2", "rl.batch_size=4", "rl.num_generations=4", "rl.max_completion_length=8",
         "rl.log_every=1", "rl.save_every=1", "rl.validation_prompts=4"]


def test_split_takes_every_domain_in_turn_and_never_trains_on_a_held_out_prompt():
    rows = [{"id": f"{d}-{i}", "domain": d} for d, n in (("mcp", 5), ("os", 2), ("web", 9)) for i in range(n)]
    data = datasets.Dataset.from_list(rows)
    train, val = validation.split(data, 7, seed=3)
    assert Counter(val["domain"]) == {"mcp": 3, "os": 2, "web": 2}   # round-robin; os runs out
    assert not set(train["id"]) & set(val["id"]) and len(train) + len(val) == len(data)
    assert validation.split(data, 7, seed=3)[1]["id"] == val["id"]    # seeded: a resume holds out the same
    assert validation.split(data, 7, seed=4)[1]["id"] != val["id"]
    assert validation.split(data, 0, seed=3) == (data, None)
    with pytest.raises(ValueError, match="rl.validation_prompts=16 leaves no prompt to train on"):
        validation.split(data, 16, seed=0)


def test_keep_best_keeps_rl_only_for_a_higher_held_out_score():
    lo, hi = {"macro": 0.25}, {"macro": 0.5}
    assert validation.keep(lo, hi, keep_best=True) == "rl"
    assert validation.keep(hi, lo, keep_best=True) == validation.keep(lo, lo, keep_best=True) == "init"
    assert validation.keep(hi, lo, keep_best=False) == "rl"


def test_keep_best_needs_a_held_out_set(run_copy, sft_init):
    cfg = make_cfg(run_copy, *STEPS[:-1], "rl.keep_best=true", f"rl.init={sft_init}")
    with pytest.raises(ValueError, match="rl.keep_best .* set rl.validation_prompts > 0"):
        _stage_fn("rl")(cfg, RunPaths(run_copy))


def test_without_a_gain_the_starting_weights_are_kept(run_copy, sft_init):
    # lr 0: the final weights are the starting ones, so they cannot score higher (a tie keeps init)
    cfg = make_cfg(run_copy, *STEPS, "rl.keep_best=true", "rl.lr=0", f"rl.init={sft_init}")
    summary = _stage_fn("rl")(cfg, RunPaths(run_copy))
    final = run_copy / "rl" / "final"
    assert summary["kept"] == "init" and summary["validation_prompts"] == 4 and summary["steps"] == 2
    held = summary["held_out"]
    assert held["init"] == held["final"] and held["init"]["prompts"] == 4
    assert set(held["init"]["by_domain"]) == {"terminal"} and 0.0 <= held["init"]["macro"] <= 1.0
    assert (final / "model.safetensors").read_bytes() == (sft_init / "model.safetensors").read_bytes()
    assert (final / "complete").exists()
    # the training reward counts only training's completions (2 steps x 4), not the held-out answers
    assert summary["scored_completions"] == 8
    from eval.run import rl_note
    assert "rl's model is its starting weights (rl.keep_best" in rl_note(RunPaths(run_copy))


def test_rl_weights_are_kept_when_asked_and_a_resume_carries_the_starting_score(run_copy, sft_init):
    cfg = make_cfg(run_copy, *STEPS, "rl.lr=1e-3", "rl.warmup_steps=0", f"rl.init={sft_init}")
    first = _stage_fn("rl")(cfg, RunPaths(run_copy))
    assert first["kept"] == "rl"      # rl.keep_best is off: the RL weights, whatever they score
    after, init = load_file(run_copy / "rl" / "final" / "model.safetensors"), load_file(sft_init / "model.safetensors")
    assert not torch.equal(after["model.embed_tokens.weight"], init["model.embed_tokens.weight"])
    from lwm.train.trl import CARRIED
    carried = json.loads((run_copy / "rl" / "checkpoints" / "checkpoint-2" / CARRIED).read_text())
    assert carried["held_out_init"] == first["held_out"]["init"]
    # trained on to 3 steps from checkpoint-2: the starting weights' score comes from the checkpoint
    more = make_cfg(run_copy, *STEPS, "rl.max_steps=3", "rl.lr=1e-3", "rl.warmup_steps=0", f"rl.init={sft_init}")
    second = _stage_fn("rl")(more, RunPaths(run_copy))
    assert second["steps"] == 3 and second["held_out"]["init"] == first["held_out"]["init"]


def test_a_checkpoint_without_the_starting_score_is_refused(run_copy, sft_init):
    from lwm.train.trl import CARRIED
    cfg = make_cfg(run_copy, *STEPS[:-1], "rl.lr=1e-3", f"rl.init={sft_init}")   # no held-out check
    _stage_fn("rl")(cfg, RunPaths(run_copy))
    assert "held_out_init" not in json.loads((run_copy / "rl" / "checkpoints" / "checkpoint-2" / CARRIED).read_text())
    more = make_cfg(run_copy, *STEPS, "rl.max_steps=3", f"rl.init={sft_init}")
    with pytest.raises(RuntimeError, match="holds no held-out reward .* rl.resume=never"):
        _stage_fn("rl")(more, RunPaths(run_copy))
