"""Qwen3.5-MoE (Qwen3_5MoeForCausalLM): Gated DeltaNet linear attention with gated full attention
every full_attention_interval-th layer, routed experts plus a sigmoid-gated shared expert,
zero-centred RMSNorms. Its state-dict adapter is adapter.py; megatron_layers.py builds the
hybrid block from Megatron's torch layers where Transformer Engine is missing."""

from __future__ import annotations

from lwm.models.qwen3_moe import Qwen3Moe


class Qwen35Moe(Qwen3Moe):
    arch = "qwen3_5_moe"
    # the released checkpoints are the vision-language model, whose text model the adapter reads
    hf_model_types = ("qwen3_5_moe", "qwen3_5_moe_text")
    layout_class = "Qwen35MoeLayout"

    def hf_config(self, mcfg, common: dict):
        from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig
        if mcfg.shared_expert_intermediate_size <= 0:
            raise ValueError("model.shared_expert_intermediate_size must be > 0 for qwen3_5_moe "
                             "(every Qwen3.5 MoE layer has a gated shared expert)")
        common = {k: v for k, v in common.items() if k != "rope_theta"}
        config = Qwen3_5MoeTextConfig(
            shared_expert_intermediate_size=mcfg.shared_expert_intermediate_size,
            full_attention_interval=mcfg.full_attention_interval, linear_conv_kernel_dim=4,
            linear_num_key_heads=mcfg.linear_num_key_heads, linear_num_value_heads=mcfg.linear_num_value_heads,
            linear_key_head_dim=mcfg.linear_key_head_dim, linear_value_head_dim=mcfg.linear_value_head_dim,
            rope_parameters={"rope_type": "default", "rope_theta": mcfg.rope_theta,
                             "partial_rotary_factor": mcfg.partial_rotary_factor},
            **common)
        return config, Qwen3_5MoeForCausalLM

    def megatron_config(self, mcfg) -> dict:
        kw = super().megatron_config(mcfg)
        if mcfg.shared_expert_intermediate_size:
            kw.update(moe_shared_expert_intermediate_size=mcfg.shared_expert_intermediate_size,
                      moe_shared_expert_gate=True)  # Qwen3.5's shared expert is sigmoid-gated
        # Gated DeltaNet linear attention, with full gated attention every Nth layer.
        # Its norms (q/k and the DeltaNet output norm included) are zero-centred RMSNorms.
        kw.update(experimental_attention_variant="gated_delta_net", layernorm_zero_centered_gamma=True,
                  linear_attention_freq=mcfg.full_attention_interval, attention_output_gate=True,
                  linear_conv_kernel_dim=4, linear_key_head_dim=mcfg.linear_key_head_dim,
                  linear_value_head_dim=mcfg.linear_value_head_dim,
                  linear_num_key_heads=mcfg.linear_num_key_heads,
                  linear_num_value_heads=mcfg.linear_num_value_heads)
        return kw

    def layer_spec(self, tc, mcfg, use_te: bool):
        """Megatron's own spec for the hybrid block requires Transformer Engine; without it the
        same block comes from megatron_layers."""
        if not use_te:
            from lwm.models.qwen3_5_moe.megatron_layers import hybrid_block_spec
            return hybrid_block_spec(tc)
        from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
            get_transformer_block_with_experimental_attention_variant_spec,
        )
        return get_transformer_block_with_experimental_attention_variant_spec(tc)

    def check_parallel(self, mcfg, m, errors: list[str]) -> None:
        from lwm.models.family import must_divide
        tp = m.tensor_parallel
        must_divide(errors, mcfg.linear_num_key_heads, "model.linear_num_key_heads", tp,
                    "backend.megatron.tensor_parallel")
        must_divide(errors, mcfg.linear_num_value_heads, "model.linear_num_value_heads", tp,
                    "backend.megatron.tensor_parallel")
        if m.context_parallel > 1:  # megatron-core's GatedDeltaNet has no context-parallel path yet
            errors.append("backend.megatron.context_parallel must be 1 for qwen3_5_moe "
                          "(megatron-core's Gated DeltaNet layers do not split the sequence)")
