"""Run with tests/helpers/megatron_site on PYTHONPATH (Megatron on CPU): `python tests/helpers/megatron_forward.py [ARCH]`.

Builds a tiny model of ARCH (qwen3_moe, the default, or qwen3_5_moe) in HF and in megatron-core
from the same config, copies the HF weights through lwm.models.convert, and prints the largest logit
difference on random tokens as JSON.
"""

import json
import sys

import torch

if __name__ == "__main__":
    from lwm.config import BackendConfig, ModelConfig
    from lwm.models.convert import hf_to_megatron, layout_for_model
    from lwm.models.hf import build_model as build_hf
    from lwm.models.megatron import build_model as build_mcore
    from lwm.models.megatron_names import to_model_names
    from lwm.train import dist as pdist
    from lwm.train.engines import megatron as mg

    arch = sys.argv[1] if len(sys.argv) > 1 else "qwen3_moe"
    mcfg = ModelConfig(arch=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       intermediate_size=128, moe_intermediate_size=64, num_experts=4)
    if arch == "qwen3_5_moe":  # 3 DeltaNet layers (2 key heads shared by 4 value heads), then attention
        mcfg.num_layers, mcfg.shared_expert_intermediate_size, mcfg.partial_rotary_factor = 4, 48, 0.25
        mcfg.linear_num_key_heads, mcfg.linear_num_value_heads = 2, 4
        mcfg.linear_key_head_dim, mcfg.linear_value_head_dim = 16, 8
        mcfg.tie_word_embeddings = False
    torch.manual_seed(0)
    hf = build_hf(mcfg, 512).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fresh norms are constant: random ones make a misplaced norm visible
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_((0 if arch == "qwen3_5_moe" and "linear_attn" not in name else 1)
                        + 0.1 * torch.randn(p.shape, generator=g))
    b = BackendConfig(name="megatron")
    b.megatron.grouped_gemm = False
    pdist.init(always=True)
    mg.initialize_parallel(b)
    model = build_mcore(mcfg, b, 512, 64, use_te=False, cpu_init=True).eval()
    # conversion writes the TE spec's names; this torch-only model names its input norms its own way
    converted = to_model_names(model, hf_to_megatron(hf.state_dict(), layout_for_model(mcfg)))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    ids = torch.randint(0, 512, (2, 80), generator=g)  # 80 > one 64-token DeltaNet chunk
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        ours, ref = model(ids, pos, None), hf(input_ids=ids).logits
    print(json.dumps({"missing": [k for k in missing if not k.endswith("_extra_state")], "unexpected": unexpected,
                      "max_abs_diff": (ours - ref).abs().max().item(), "ref_scale": ref.abs().max().item()}))
