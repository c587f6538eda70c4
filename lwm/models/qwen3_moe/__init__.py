"""Qwen3-MoE (Qwen3MoeForCausalLM): SwiGLU experts on every layer, RMSNorm, per-head q/k norm,
no biases. Its state-dict adapter is adapter.py."""

from __future__ import annotations

from lwm.models.family import ModelFamily


class Qwen3Moe(ModelFamily):
    arch = "qwen3_moe"
    hf_model_types = ("qwen3_moe",)
    layout_class = "Qwen3MoeLayout"

    def hf_config(self, mcfg, common: dict):
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        return Qwen3MoeConfig(decoder_sparse_step=1, mlp_only_layers=[], **common), Qwen3MoeForCausalLM

    def megatron_config(self, mcfg) -> dict:
        import torch.nn.functional as F
        return dict(
            # SwiGLU experts, RMSNorm (eps 1e-6), per-head q/k RMSNorm, no biases.
            gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm", layernorm_epsilon=1e-6,
            qk_layernorm=True, add_bias_linear=False, add_qkv_bias=False, moe_layer_freq=1,
            # softmax over all experts, top-k, renormalised (norm_topk_prob) equals top-k on the
            # logits then softmax over the k: Megatron's pre_softmax=False.
            moe_router_score_function="softmax", moe_router_pre_softmax=False,
        )

    def layer_spec(self, tc, mcfg, use_te: bool):
        from megatron.core.models.gpt import gpt_layer_specs as specs
        if use_te:
            return specs.get_gpt_layer_with_transformer_engine_spec(
                num_experts=mcfg.num_experts, moe_grouped_gemm=tc.moe_grouped_gemm, qk_layernorm=True)
        spec = specs.get_gpt_layer_local_spec(num_experts=mcfg.num_experts, moe_grouped_gemm=False,
                                              qk_layernorm=True, normalization="RMSNorm")
        spec.submodules.sharded_state_dict_keys_map = te_keys_map(moe=bool(mcfg.num_experts))
        return spec


def te_keys_map(moe: bool) -> dict[str, str]:
    """The torch-only layer's norms under the names of the TE layer (lwm.models.megatron_names).
    TE fuses the input norm into linear_qkv, and the pre-MLP norm into linear_fc1 only for a
    dense MLP: an MoE layer keeps `pre_mlp_layernorm` (the router and the experts share it).
    Megatron's local spec maps the pre-MLP norm to linear_fc1 for MoE layers too, which no TE
    model loads."""
    keys_map = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    if not moe:
        keys_map["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    return keys_map
