"""HF <-> Megatron conversion of the tiny Qwen3-MoE and Qwen3.5-MoE: every tensor, every expert,
round trips bit-exactly; a missing expert is refused; the command-line converter round trips a
saved checkpoint to identical logits. (That the converted weights compute the HF logits in
Megatron is tests/test_backend_megatron.py.)"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lwm.config import ModelConfig
from lwm.models import FAMILIES, family, family_for_hf
from lwm.models.convert import expert_tensor_count, hf_to_megatron, layout_for_model, main, megatron_to_hf
from lwm.models.hf import build_config, build_model
from lwm.models.qwen3_5_moe.adapter import Qwen35MoeLayout
from lwm.models.qwen3_moe.adapter import Qwen3MoeLayout

MCFG = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   intermediate_size=128, moe_intermediate_size=64, num_experts=4)
# 3 Gated DeltaNet layers (2 key heads shared by 4 value heads) then one gated-attention layer
Q35 = ModelConfig(arch="qwen3_5_moe", hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=128, moe_intermediate_size=32, num_experts=4, shared_expert_intermediate_size=48,
                  linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8,
                  partial_rotary_factor=0.25, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return build_model(MCFG, 512)


def _randomised(sd):
    # fresh-init norms are all ones: random values make a swapped norm visible
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g) for k, v in sd.items()}


@pytest.mark.parametrize("layout", ["sequential", "te_grouped"])
def test_round_trip_every_tensor_every_expert(hf_model, layout):
    sd = _randomised(hf_model.state_dict())
    L = Qwen3MoeLayout.from_model_config(MCFG)
    mg = hf_to_megatron(sd, L, layout)
    # 2 layers x 4 experts x (fc1, fc2), each its own tensor, no two alike
    assert expert_tensor_count(mg) == 2 * 4 * 2
    experts = [v for k, v in mg.items() if "experts" in k]
    assert len(experts) == 16 and len({t.sum().item() for t in experts}) == 16
    assert mg["decoder.layers.0.self_attention.linear_qkv.weight"].shape == ((4 + 2 * 2) * 16, 64)
    back = megatron_to_hf(mg, L, layout)
    assert set(back) == set(sd)
    for k in sd:
        if k == "lm_head.weight":  # tied: comes back as the embedding
            assert torch.equal(back[k], sd["model.embed_tokens.weight"])
        else:
            assert torch.equal(back[k], sd[k]), k
    # per-expert (on-disk) HF layout: 3 tensors per expert, same Megatron state dict again
    per = megatron_to_hf(mg, L, layout, per_expert=True)
    assert expert_tensor_count(per) == 2 * 4 * 3
    again = hf_to_megatron(per, L, layout)
    assert set(again) == set(mg) and all(torch.equal(again[k], mg[k]) for k in mg)


def test_qkv_layout_is_grouped_per_kv_head(hf_model):
    sd = hf_model.state_dict()
    L = Qwen3MoeLayout.from_model_config(MCFG)
    qkv = hf_to_megatron(sd, L)["decoder.layers.1.self_attention.linear_qkv.weight"].view(2, 4, 16, 64)
    q = sd["model.layers.1.self_attn.q_proj.weight"].view(4, 16, 64)
    k = sd["model.layers.1.self_attn.k_proj.weight"].view(2, 16, 64)
    v = sd["model.layers.1.self_attn.v_proj.weight"].view(2, 16, 64)
    for g in range(2):  # group g: its 2 query heads, then its key head, then its value head
        assert torch.equal(qkv[g, :2], q[2 * g:2 * g + 2])
        assert torch.equal(qkv[g, 2], k[g]) and torch.equal(qkv[g, 3], v[g])


def test_a_missing_expert_is_refused(hf_model):
    L = Qwen3MoeLayout.from_model_config(MCFG)
    mg = hf_to_megatron(hf_model.state_dict(), L)
    del mg["decoder.layers.1.mlp.experts.local_experts.3.linear_fc2.weight"]
    with pytest.raises(ValueError, match="15 expert tensors, expected 16"):
        megatron_to_hf(mg, L)
    per = megatron_to_hf(hf_to_megatron(hf_model.state_dict(), L), L, per_expert=True)
    for name in ("gate", "up", "down"):
        del per[f"model.layers.0.mlp.experts.2.{name}_proj.weight"]
    with pytest.raises(ValueError, match="expected 0..3"):
        hf_to_megatron(per, L)


def test_command_line_round_trip_same_logits(hf_model, tmp_path):
    src, mc, dst = tmp_path / "hf", tmp_path / "mcore.safetensors", tmp_path / "hf_back"
    hf_model.save_pretrained(src, safe_serialization=True)
    main(["hf2mcore", str(src), str(mc)])
    assert expert_tensor_count(load_file(str(mc))) == 16
    main(["mcore2hf", str(mc), str(src), str(dst)])
    from transformers import AutoModelForCausalLM
    back = AutoModelForCausalLM.from_pretrained(str(dst))
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(hf_model(ids).logits, back(ids).logits)
    a, b = hf_model.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_adapter_follows_the_arch():
    assert isinstance(layout_for_model(MCFG), Qwen3MoeLayout)
    assert isinstance(layout_for_model(Q35), Qwen35MoeLayout)
    with pytest.raises(ValueError, match="qwen3_5_moe"):
        Qwen3MoeLayout.from_model_config(Q35)


def test_the_registry_names_model_arch_and_the_known_families():
    assert family("qwen3_5_moe") is FAMILIES["qwen3_5_moe"]
    assert family_for_hf("qwen3_5_moe_text").arch == "qwen3_5_moe"  # the released checkpoints' text model
    for unknown in (lambda: layout_for_model(ModelConfig(arch="llama")),
                    lambda: build_config(ModelConfig(arch="llama"), 512)):
        with pytest.raises(ValueError, match=r"model.arch = 'llama'.*qwen3_moe, qwen3_5_moe"):
            unknown()
    with pytest.raises(ValueError, match="model_type 'llama'"):
        family_for_hf("llama")


@pytest.fixture(scope="module")
def q35_state():
    torch.manual_seed(0)
    sd = _randomised(build_model(Q35, 512).state_dict())
    # the DeltaNet output norm is a plain RMSNorm, its weights near one as in trained checkpoints
    return {k: 1 + 0.1 * v if k.endswith("linear_attn.norm.weight") else v for k, v in sd.items()}


@pytest.mark.parametrize("layout", ["sequential", "te_grouped"])
def test_qwen3_5_round_trip_every_tensor_every_expert(q35_state, layout):
    sd, L = q35_state, layout_for_model(Q35)
    assert L.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    mg = hf_to_megatron(sd, L, layout)
    assert expert_tensor_count(mg) == 4 * 4 * 2
    experts = [v for k, v in mg.items() if "experts" in k and "shared" not in k]
    assert len(experts) == 32 and len({t.sum().item() for t in experts}) == 32
    # in_proj = [q, k, v, z, beta, alpha]: 2 * 2 * 16 + 2 * 4 * 8 + 2 * 4 rows
    assert mg["decoder.layers.0.self_attention.in_proj.weight"].shape == (136, 64)
    assert mg["decoder.layers.3.self_attention.linear_qkv.weight"].shape == ((2 * 4 + 2 * 2) * 16, 64)
    back = megatron_to_hf(mg, L, layout)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    per = megatron_to_hf(mg, L, layout, per_expert=True)
    again = hf_to_megatron(per, L, layout)
    assert set(again) == set(mg) and all(torch.equal(again[k], mg[k]) for k in mg)


def test_qwen3_5_layouts_megatron_expects(q35_state):
    sd, L = q35_state, layout_for_model(Q35)
    mg = hf_to_megatron(sd, L)
    # gated attention: per KV group, its query heads, then their output gates, then k, then v
    qkv = mg["decoder.layers.3.self_attention.linear_qkv.weight"].view(2, 6, 16, 64)
    q = sd["model.layers.3.self_attn.q_proj.weight"].view(4, 2, 16, 64)  # per head: query rows, gate rows
    k = sd["model.layers.3.self_attn.k_proj.weight"].view(2, 16, 64)
    v = sd["model.layers.3.self_attn.v_proj.weight"].view(2, 16, 64)
    for g in range(2):
        assert torch.equal(qkv[g, :2], q[2 * g:2 * g + 2, 0]) and torch.equal(qkv[g, 2:4], q[2 * g:2 * g + 2, 1])
        assert torch.equal(qkv[g, 4], k[g]) and torch.equal(qkv[g, 5], v[g])
    a = "model.layers.1.linear_attn."
    in_proj = mg["decoder.layers.1.self_attention.in_proj.weight"]
    assert torch.equal(in_proj, torch.cat([sd[a + f"in_proj_{p}.weight"] for p in ("qkv", "z", "b", "a")]))
    assert torch.equal(mg["decoder.layers.1.self_attention.out_norm.weight"], sd[a + "norm.weight"] - 1)
    shared = mg["decoder.layers.1.mlp.shared_experts.linear_fc1.weight"]
    assert torch.equal(shared[:48], sd["model.layers.1.mlp.shared_expert.gate_proj.weight"])


def test_qwen3_5_reads_the_released_vision_language_layout(q35_state):
    """Released Qwen3.5 checkpoints keep the text model under model.language_model. next to
    vision and multi-token-prediction weights, which the text model has no place for: vision
    is left out by name, MTP only when told to (tests/test_megatron_names.py: the refusal)."""
    L = layout_for_model(Q35)
    vl = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
          for k, v in q35_state.items()}
    vl["model.visual.patch_embed.proj.weight"] = torch.zeros(4)
    vl["mtp.fc.weight"] = torch.zeros(4)
    with pytest.raises(ValueError, match="'mtp.fc.weight'.*--drop-mtp"):
        hf_to_megatron(vl, L)
    a, b = hf_to_megatron(q35_state, L), hf_to_megatron(vl, L, drop_mtp=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_qwen3_5_command_line_round_trip_same_logits(q35_state, tmp_path):
    torch.manual_seed(0)
    model = build_model(Q35, 512).eval()
    model.load_state_dict(q35_state)
    src, mc, dst = tmp_path / "hf", tmp_path / "mcore.safetensors", tmp_path / "hf_back"
    model.save_pretrained(src, safe_serialization=True)
    main(["hf2mcore", str(src), str(mc)])
    main(["mcore2hf", str(mc), str(src), str(dst)])
    from transformers import AutoModelForCausalLM
    back = AutoModelForCausalLM.from_pretrained(str(dst)).eval()
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


def test_megatron_checkpoint_conversion_runs_on_a_cpu_machine(prepared_run, sft_init, tmp_path):
    """`python -m lwm.models.megatron_ckpt import|export` from the command line, with no GPU and
    without the tests' Megatron site: HF -> dist checkpoint -> HF, bit for bit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    from tests.conftest import make_cfg
    root = Path(__file__).resolve().parent.parent
    conf = tmp_path / "run.yaml"
    OmegaConf.save(make_cfg(prepared_run, "backend=megatron", "backend.dtype=float32"), conf, resolve=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root)}
    for direction, src, dst in (("import", sft_init, tmp_path / "mcore"), ("export", tmp_path / "mcore", tmp_path / "back")):
        res = subprocess.run([sys.executable, "-m", "lwm.models.megatron_ckpt", direction, str(conf), str(src), str(dst)],
                             cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    start, back = load_file(sft_init / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert start.keys() == back.keys() and all(torch.equal(start[k], back[k]) for k in start)
