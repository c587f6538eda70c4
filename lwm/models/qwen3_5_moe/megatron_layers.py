"""Qwen3.5's hybrid decoder in megatron-core without Transformer Engine.

Megatron 0.16 builds its Gated DeltaNet block only from Transformer Engine layers
(`get_transformer_block_with_experimental_attention_variant_spec` asserts TE). The same
block in Megatron's own torch layers lets a Qwen3.5 model run where TE is missing: the one-rank
HF <-> dist checkpoint conversion and CPU runs. Its checkpoint keys are TE's (the separate
input norm is saved as the fused `layer_norm_weight` of the following projection), so a
checkpoint written here loads into the TE model on GPUs and back.

Every norm of Qwen3.5 is zero-centred, y = x / rms(x) * (1 + w): Megatron's torch norm refuses
`layernorm_zero_centered_gamma`, so `ZeroCenteredRMSNorm` provides it (TE has it built in).
"""

from __future__ import annotations

import torch


class ZeroCenteredRMSNorm(torch.nn.Module):
    """RMSNorm storing its scale as an offset from one, computed in float32 like HF's Qwen3.5."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        # replicated over TP ranks: with sequence parallel its gradient is all-reduced there
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def hybrid_block_spec(config, vp_stage: int | None = None, pp_rank: int | None = None):
    """Per-layer specs of this pipeline stage: Gated DeltaNet or gated self-attention (by
    config.linear_attention_freq), each followed by the MoE with its shared expert."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.backends import LocalSpecProvider
    from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
        get_linear_attention_pattern,
    )
    from megatron.core.models.gpt.moe_module_specs import (
        get_moe_module_spec_for_backend,
    )
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import (
        SelfAttention,
        SelfAttentionSubmodules,
    )
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )
    from megatron.core.transformer.transformer_layer import (
        TransformerLayer,
        TransformerLayerSubmodules,
        get_transformer_layer_offset,
    )
    norm = ZeroCenteredRMSNorm
    delta_net = ModuleSpec(module=GatedDeltaNet, submodules=GatedDeltaNetSubmodules(
        in_proj=ColumnParallelLinear, out_norm=norm, out_proj=RowParallelLinear))
    attention = ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                           submodules=SelfAttentionSubmodules(
                               linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention,
                               linear_proj=RowParallelLinear, q_layernorm=norm, k_layernorm=norm))
    moe = get_moe_module_spec_for_backend(LocalSpecProvider(), num_experts=config.num_moe_experts,
                                          moe_grouped_gemm=False)
    layers = []
    for linear in get_linear_attention_pattern(config):
        fused = "self_attention.in_proj.layer_norm_" if linear else "self_attention.linear_qkv.layer_norm_"
        layers.append(ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
            input_layernorm=norm, self_attention=delta_net if linear else attention,
            self_attn_bda=get_bias_dropout_add, pre_mlp_layernorm=norm, mlp=moe, mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"input_layernorm.": fused})))
    first = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    count = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=layers[first:first + count], layer_norm=norm)
