"""prepare -> cpt -> sft -> rl -> eval on recorded trajectories with a tiny model."""

import json

from launch.stages import _stage_fn
from lwm.tracking import RunPaths
from tests.conftest import make_cfg

FAST = ["cpt.max_steps=6", "cpt.batch_size=4", "sft.max_steps=4", "sft.batch_size=4",
        "rl.max_steps=2", "rl.batch_size=4", "rl.num_generations=4", "rl.max_completion_length=32",
        "eval.max_samples=8", "eval.max_new_tokens=32", "eval.compare_stages=true"]


def test_training_stages_chain_and_eval_compares(run_copy):
    cfg = make_cfg(run_copy, *FAST)
    paths = RunPaths(run_copy)
    for stage in ("cpt", "sft", "rl"):
        metrics = _stage_fn(stage)(cfg, paths)
        assert (run_copy / stage / "final" / "model.safetensors").exists()
        assert json.loads((run_copy / stage / "metrics.json").read_text())["stage"] == stage
        assert metrics["steps"] == cfg[stage].max_steps
    assert _stage_fn("sft")(cfg, paths)["init"].endswith("cpt/final")  # finished stages are kept
    report = _stage_fn("eval")(cfg, paths)
    assert list(report["results"]) == ["init", "cpt", "sft", "rl"]
    for result in report["results"].values():
        assert set(result["domains"]) == {"terminal"} and result["samples"] == 8
        assert 0.0 <= result["macro"] <= 1.0
    table = (run_copy / "eval" / "report.md").read_text()
    assert "| init |" in table and "| rl |" in table


def test_trained_checkpoint_loads_with_transformers(run_copy):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = make_cfg(run_copy, *FAST)
    _stage_fn("cpt")(cfg, RunPaths(run_copy))
    final = run_copy / "cpt" / "final"
    model = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok.apply_chat_template([{"role": "user", "content": "ls"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
