"""Run with tests/megatron_site on PYTHONPATH (Megatron on CPU): `python tests/megatron_forward.py`.

Builds the tiny Qwen3-MoE in HF and in megatron-core from the same config, copies the HF weights
through lwm.convert, and prints the largest logit difference on random tokens as JSON.
"""

import json

import torch

if __name__ == "__main__":
    from lwm.config import BackendConfig, ModelConfig
    from lwm.convert import Qwen3MoeLayout, hf_to_megatron
    from lwm.modeling import build_model as build_hf
    from pretrain.backends import dist as pdist
    from pretrain.backends import megatron as mg

    mcfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       intermediate_size=128, moe_intermediate_size=64, num_experts=4)
    torch.manual_seed(0)
    hf = build_hf(mcfg, 512).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fresh norms are all ones: random ones make a misplaced norm visible
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    b = BackendConfig(name="megatron")
    b.megatron.grouped_gemm = False
    pdist.init(always=True)
    mg.initialize_parallel(b)
    model = mg.build_model(mcfg, b, 512, 64, use_te=False, cpu_init=True).eval()
    missing, unexpected = model.load_state_dict(hf_to_megatron(hf.state_dict(), Qwen3MoeLayout.from_model_config(mcfg)),
                                                strict=False)
    ids = torch.randint(0, 512, (2, 32), generator=g)
    pos = torch.arange(32).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        ours, ref = model(ids, pos, None), hf(input_ids=ids).logits
    print(json.dumps({"missing": [k for k in missing if not k.endswith("_extra_state")], "unexpected": unexpected,
                      "max_abs_diff": (ours - ref).abs().max().item(), "ref_scale": ref.abs().max().item()}))
