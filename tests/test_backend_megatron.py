"""backend=megatron on CPU over gloo: megatron-core's own model, DDP, distributed optimizer,
schedule and dist_checkpointing, with only its CUDA-only spots patched (lwm/models/megatron_cpu.py,
loaded into every process through tests/helpers/megatron_site).

- the Megatron model computes the HF model's logits from converted weights;
- `lwm cpt backend=megatron` trains from the HF starting point, its loss falls and it ends in
  an HF checkpoint that transformers loads;
- 2 ranks (data parallel, expert parallel EP=2, pipeline parallel PP=2) end with the weights
  of 1 rank that takes the same batches by gradient accumulation;
- a checkpoint written by 2 ranks resumes on 1 (the distributed optimizer re-split over DP)
  and ends as the uninterrupted run; a layout the optimizer state cannot follow is refused;
- the hybrid Qwen3.5 (Gated DeltaNet + gated attention, shared expert) does the same on
  Megatron's torch layers: HF logits, training from and back to HF (the starting point comes
  back bit for bit), and tensor + sequence + expert parallel on 2 ranks as 1 rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(__file__).resolve().parent / "helpers" / "megatron_site"
STEPS = ["backend=megatron", "backend.dtype=float32", "backend.megatron.grouped_gemm=false",
         "cpt.max_steps=4", "cpt.save_every=2", "cpt.warmup_steps=1", "cpt.batch_size=2", "cpt.lr=3e-3",
         "backend.num_threads=1"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]), "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cpt(run_dir: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess:
    return run_cli("cpt", run_dir, *STEPS, *extra, ranks=ranks, env=_env())


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "cpt" / "final" / "model.safetensors")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen3_5_moe"])
def test_megatron_model_computes_the_hf_logits(arch):
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "megatron_forward.py"), arch], env=_env(),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["missing"] == [] and out["unexpected"] == []
    assert out["max_abs_diff"] < 1e-5 * out["ref_scale"] + 1e-6, out


@pytest.fixture(scope="module")
def one_rank(prepared_run, tmp_path_factory):
    """The reference: 1 rank, 2 micro-batches per step."""
    run = tmp_path_factory.mktemp("mg_one") / "run"
    shutil.copytree(prepared_run, run)
    _cpt(run, "cpt.grad_accum=2")
    return run


def test_cpt_trains_and_ends_in_an_hf_checkpoint(one_rank):
    from transformers import AutoModelForCausalLM
    m = json.loads((one_rank / "cpt" / "metrics.json").read_text())
    assert m["backend"] == "megatron" and m["steps"] == 4
    assert m["train_loss_last"] < m["train_loss_first"]
    AutoModelForCausalLM.from_pretrained(one_rank / "cpt" / "final")
    start, trained = load_file(one_rank / "init" / "final" / "model.safetensors"), _weights(one_rank)
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # it trained, every tensor came back
    # the dist checkpoints of steps 2 and 4 are complete, with their layout recorded
    meta = json.loads((Path(m["last_checkpoint"]) / "state.json").read_text())
    assert meta["step"] == 4 and meta["dp_size"] == 1


@pytest.mark.parametrize("layout", [
    ["cpt.grad_accum=1"],                                               # DP 2
    ["cpt.grad_accum=1", "backend.megatron.expert_parallel=2"],         # DP 2, EP 2
    ["cpt.grad_accum=2", "backend.megatron.pipeline_parallel=2"],       # PP 2: a layer per stage
], ids=["dp2", "dp2_ep2", "pp2"])
def test_two_ranks_equal_one_rank_with_accumulation(one_rank, prepared_run, tmp_path, layout):
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run)
    _cpt(run, *layout, ranks=2)
    m, ref = (json.loads((r / "cpt" / "metrics.json").read_text()) for r in (run, one_rank))
    assert m["layout"].startswith("world 2")
    assert m["train_loss_first"] == pytest.approx(ref["train_loss_first"], rel=1e-5)
    _assert_same_weights(_weights(one_rank), _weights(run))


def test_resume_on_fewer_ranks_reshards_the_optimizer(one_rank, prepared_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run)
    _cpt(run, "cpt.grad_accum=1", ranks=2)
    # as if killed after the step-2 checkpoint
    ckpts = run / "cpt" / "checkpoints"
    shutil.rmtree(ckpts / "step_0000004")
    shutil.rmtree(run / "cpt" / "final")
    res = _cpt(run, "cpt.grad_accum=2")
    assert "DP 2 -> 1" in res.stdout + res.stderr
    _assert_same_weights(_weights(one_rank), _weights(run))


def test_a_layout_the_optimizer_cannot_follow_is_refused():
    from lwm.train.engines.megatron import check_resume_layout
    saved = {"tp": 1, "pp": 1, "cp": 1, "ep": 2, "etp": 1, "dp_size": 2, "distributed_optimizer": True}
    check_resume_layout(saved, {**saved, "dp_size": 1}, "ckpt")  # DP alone may change
    with pytest.raises(RuntimeError, match="ep 2 -> 1.*<stage>.init"):
        check_resume_layout(saved, {**saved, "ep": 1, "dp_size": 2}, "ckpt")


def test_sft_on_megatron_trains_the_lwm_sft_samples(prepared_run, sft_init, tmp_path):
    """`lwm sft backend=megatron`: its first loss is the HF model's loss on the same first batch
    (the samples `lwm sft` builds, loss on the target only), and it ends in an HF checkpoint."""
    import datasets
    from transformers import AutoModelForCausalLM

    from lwm.tokenizer import load_tokenizer
    from lwm.train.data import RowBatches
    from sft.train import tokenized_samples
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run)
    run_cli("sft", run, f"sft.init={sft_init}", "sft.max_steps=3", "sft.batch_size=2", "sft.max_length=1024",
            "sft.save_every=2", "sft.warmup_steps=1", "backend=megatron", "backend.dtype=float32",
            "backend.megatron.grouped_gemm=false", "backend.num_threads=1", env=_env())
    m = json.loads((run / "sft" / "metrics.json").read_text())
    assert m["backend"] == "megatron" and m["steps"] == 3 and m["samples"] > 0

    tok = load_tokenizer(sft_init)
    records = datasets.Dataset.from_parquet(sorted(str(p) for p in (run / "prepare" / "sft").glob("*.parquet")))
    rows, _ = tokenized_samples(tok, records, 1024, False)
    ids, labels = RowBatches(rows, 1024, tok.pad_token_id, seed=0).batch(0, 2)
    hf = AutoModelForCausalLM.from_pretrained(sft_init).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, labels=labels, use_cache=False).loss.item()
    assert m["train_loss_first"] == pytest.approx(ref, rel=1e-4)
    AutoModelForCausalLM.from_pretrained(run / "sft" / "final")


def _qwen3_5(run: Path) -> list[str]:
    """The tiny hybrid preset at the tests' width (3 DeltaNet layers, then gated attention), its
    vocabulary padded so tensor parallel splits the rows evenly."""
    from lwm.tokenizer import load_tokenizer
    vocab = len(load_tokenizer(run / "prepare" / "tokenizer"))
    return ["model=tiny_qwen3_5_moe", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2",
            "model.shared_expert_intermediate_size=64", "model.linear_key_head_dim=16",
            "model.linear_value_head_dim=16", f"model.vocab_size={-(-vocab // 8) * 8}", "cpt.grad_accum=2"]


@pytest.fixture(scope="module")
def qwen3_5_one_rank(prepared_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("mg_q35") / "run"
    shutil.copytree(prepared_run, run)
    _cpt(run, *_qwen3_5(run))
    return run


def test_qwen3_5_trains_on_megatron_from_and_back_to_hf(qwen3_5_one_rank, tmp_path):
    from transformers import AutoModelForCausalLM
    run = qwen3_5_one_rank
    m = json.loads((run / "cpt" / "metrics.json").read_text())
    assert m["steps"] == 4 and m["train_loss_last"] < m["train_loss_first"]
    assert type(AutoModelForCausalLM.from_pretrained(run / "cpt" / "final")).__name__ == "Qwen3_5MoeForCausalLM"
    # the imported starting point, exported again, is the HF model it came from, bit for bit
    ckpts = run / "cpt" / "checkpoints"
    res = subprocess.run([sys.executable, "-m", "lwm.models.megatron_ckpt", "export",
                          str(ckpts / ".megatron_import.yaml"), str(ckpts / "init"), str(tmp_path / "back")],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    start, back = load_file(run / "init" / "final" / "model.safetensors"), load_file(tmp_path / "back" /
                                                                                      "model.safetensors")
    assert start.keys() == back.keys() and all(torch.equal(start[k], back[k]) for k in start)


def test_qwen3_5_tensor_sequence_expert_parallel_equal_one_rank(qwen3_5_one_rank, prepared_run, tmp_path):
    """TP 2 with sequence parallel splits the DeltaNet and attention heads, EP 2 the experts."""
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run)
    _cpt(run, *_qwen3_5(run), "backend.megatron.tensor_parallel=2", "backend.megatron.sequence_parallel=true",
         "backend.megatron.expert_parallel=2", ranks=2)
    ref_run = qwen3_5_one_rank
    m, ref = (json.loads((r / "cpt" / "metrics.json").read_text()) for r in (run, ref_run))
    assert m["layout"].startswith("world 2 = TP 2")
    assert m["train_loss_first"] == pytest.approx(ref["train_loss_first"], rel=1e-6)
    assert m["train_loss_last"] == pytest.approx(ref["train_loss_last"], rel=1e-4)
    # Adam turns float-order noise in near-zero gradients into lr-sized steps on a few elements,
    # so the weights are compared with the distance training moved them: a wrong gradient
    # (a missing reduction) moves whole tensors the other way
    start, ours, theirs = (load_file(p) for p in (ref_run / "init" / "final" / "model.safetensors",
                                                   run / "cpt" / "final" / "model.safetensors",
                                                   ref_run / "cpt" / "final" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        moved = (theirs[k] - start[k]).abs().max().item()
        assert (ours[k] - theirs[k]).abs().max().item() <= 0.05 * moved, k
