"""backend=megatron: megatron-core GPTModel with MoE, configured from our typed config.

`transformer_config` is the one place our model/backend fields become Megatron's names; the
same numbers build the HF model, so a converted checkpoint loads into either. The training loop
is in megatron_train.py, the HF <-> dist checkpoint steps in megatron_ckpt.py.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("lwm.cpt.megatron")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def transformer_config(mcfg, bcfg, use_cpu_initialization: bool = False):
    """Megatron's TransformerConfig for our model and backend config (sizes not yet validated
    against a world size: see `parallel_plan`)."""
    from megatron.core.transformer.transformer_config import TransformerConfig
    m = bcfg.megatron
    if m.router_load_balancing not in ("aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"):
        raise ValueError(f"backend.megatron.router_load_balancing = '{m.router_load_balancing}': "
                         "aux_loss | seq_aux_loss | global_aux_loss | sinkhorn | none")
    if mcfg.arch not in ("qwen3_moe", "qwen3_5_moe"):
        raise ValueError(f"model.arch = '{mcfg.arch}': the megatron backend knows qwen3_moe and qwen3_5_moe")
    dtype = DTYPES[bcfg.dtype]
    recompute = m.recompute_granularity or None
    kw = dict(
        num_layers=mcfg.num_layers, hidden_size=mcfg.hidden_size,
        num_attention_heads=mcfg.num_heads, num_query_groups=mcfg.num_kv_heads, kv_channels=mcfg.head_dim,
        ffn_hidden_size=mcfg.intermediate_size,
        # Qwen3 MoE: SwiGLU experts, RMSNorm (eps 1e-6), per-head q/k RMSNorm, no biases.
        gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm", layernorm_epsilon=1e-6,
        qk_layernorm=True, add_bias_linear=False, add_qkv_bias=False,
        hidden_dropout=0.0, attention_dropout=0.0,
        num_moe_experts=mcfg.num_experts, moe_ffn_hidden_size=mcfg.moe_intermediate_size,
        moe_router_topk=mcfg.experts_per_token, moe_layer_freq=1,
        # softmax over all experts, top-k, renormalised (norm_topk_prob) equals top-k on the
        # logits then softmax over the k: Megatron's pre_softmax=False.
        moe_router_score_function="softmax", moe_router_pre_softmax=False,
        moe_router_load_balancing_type=m.router_load_balancing,
        moe_aux_loss_coeff=(m.aux_loss_coef if m.aux_loss_coef >= 0 else mcfg.router_aux_loss_coef),
        moe_z_loss_coeff=m.z_loss_coef or None,
        moe_router_dtype=m.router_dtype or None,
        moe_expert_capacity_factor=m.capacity_factor or None,
        moe_token_dispatcher_type=m.token_dispatcher, moe_grouped_gemm=m.grouped_gemm,
        moe_permute_fusion=m.permute_fusion,
        tensor_model_parallel_size=m.tensor_parallel, pipeline_model_parallel_size=m.pipeline_parallel,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_parallel or None,
        context_parallel_size=m.context_parallel, expert_model_parallel_size=m.expert_parallel,
        expert_tensor_parallel_size=m.expert_tensor_parallel, sequence_parallel=m.sequence_parallel,
        recompute_granularity=recompute,
        recompute_method=m.recompute_method if recompute == "full" else None,
        recompute_num_layers=m.recompute_num_layers if recompute == "full" else None,
        recompute_modules=list(m.recompute_modules) if recompute == "selective" else None,
        bf16=dtype == torch.bfloat16, params_dtype=dtype, pipeline_dtype=dtype,
        use_cpu_initialization=use_cpu_initialization,
    )
    if mcfg.shared_expert_intermediate_size:
        kw.update(moe_shared_expert_intermediate_size=mcfg.shared_expert_intermediate_size,
                  moe_shared_expert_gate=True)  # Qwen3.5's shared expert is sigmoid-gated
    if mcfg.arch == "qwen3_5_moe":
        # Gated DeltaNet linear attention, with full gated attention every Nth layer.
        # Its norms (q/k and the DeltaNet output norm included) are zero-centred RMSNorms.
        kw.update(experimental_attention_variant="gated_delta_net", layernorm_zero_centered_gamma=True,
                  linear_attention_freq=mcfg.full_attention_interval, attention_output_gate=True,
                  linear_conv_kernel_dim=4, linear_key_head_dim=mcfg.linear_key_head_dim,
                  linear_value_head_dim=mcfg.linear_value_head_dim,
                  linear_num_key_heads=mcfg.linear_num_key_heads,
                  linear_num_value_heads=mcfg.linear_num_value_heads)
    if recompute is None:
        kw.pop("recompute_modules")
    return TransformerConfig(**kw)


def layer_spec(tc, mcfg, use_te: bool):
    """Transformer Engine layers on GPUs; torch-only ('local') layers otherwise, where the
    experts are one MLP each (SequentialMLP), since grouped GEMM needs TE. Qwen3.5's hybrid
    block without TE comes from megatron_layers (Megatron's own spec for it requires TE)."""
    from megatron.core.models.gpt import gpt_layer_specs as specs
    if tc.moe_grouped_gemm and not use_te:
        raise ValueError("backend.megatron.grouped_gemm needs Transformer Engine: set it false without TE")
    if mcfg.arch == "qwen3_5_moe":
        if not use_te:
            from pretrain.backends.megatron_layers import hybrid_block_spec
            return hybrid_block_spec(tc)
        from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
            get_transformer_block_with_experimental_attention_variant_spec)
        return get_transformer_block_with_experimental_attention_variant_spec(tc)
    if use_te:
        return specs.get_gpt_layer_with_transformer_engine_spec(
            num_experts=mcfg.num_experts, moe_grouped_gemm=tc.moe_grouped_gemm, qk_layernorm=True)
    return specs.get_gpt_layer_local_spec(num_experts=mcfg.num_experts, moe_grouped_gemm=False,
                                          qk_layernorm=True, normalization="RMSNorm")


def gpt_kwargs(mcfg, vocab_size: int, seq_len: int) -> dict:
    return dict(vocab_size=vocab_size, max_sequence_length=max(seq_len, 1),
                position_embedding_type="rope", rotary_percent=mcfg.partial_rotary_factor,
                rotary_base=int(mcfg.rope_theta), share_embeddings_and_output_weights=mcfg.tie_word_embeddings)


def build_model(mcfg, bcfg, vocab_size: int, seq_len: int, use_te: bool | None = None, cpu_init=False):
    """This rank's GPTModel chunk (parallel state must be initialised)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    if use_te is None:
        try:
            import transformer_engine  # noqa: F401
            use_te = True
        except ImportError:
            use_te = False
    if vocab_size % bcfg.megatron.tensor_parallel:
        raise ValueError(f"vocab size {vocab_size} is not divisible by backend.megatron.tensor_parallel = "
                         f"{bcfg.megatron.tensor_parallel} (set model.vocab_size to a padded size)")
    tc = transformer_config(mcfg, bcfg, use_cpu_initialization=cpu_init)
    return GPTModel(config=tc, transformer_layer_spec=layer_spec(tc, mcfg, use_te),
                    pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
                    **gpt_kwargs(mcfg, vocab_size, seq_len))


def ddp_config(bcfg):
    from megatron.core.distributed import DistributedDataParallelConfig
    m = bcfg.megatron
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=m.distributed_optimizer,
        overlap_grad_reduce=m.overlap_grad_reduce,
        overlap_param_gather=m.overlap_param_gather and m.distributed_optimizer)


def optimizer_config(bcfg, tcfg):
    from megatron.core.optimizer import OptimizerConfig
    return OptimizerConfig(optimizer="adam", lr=tcfg.lr, min_lr=tcfg.lr * 0.1, weight_decay=tcfg.weight_decay,
                           adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, clip_grad=tcfg.max_grad_norm,
                           bf16=bcfg.dtype == "bfloat16",
                           use_distributed_optimizer=bcfg.megatron.distributed_optimizer)


def initialize_parallel(bcfg, seed: int = 1234) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    m = bcfg.megatron
    ps.initialize_model_parallel(
        tensor_model_parallel_size=m.tensor_parallel, pipeline_model_parallel_size=m.pipeline_parallel,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_parallel or None,
        context_parallel_size=m.context_parallel, expert_model_parallel_size=m.expert_parallel,
        expert_tensor_parallel_size=m.expert_tensor_parallel)
    # per-TP-rank RNG streams (dropout, init); the tensor-parallel layers need them registered
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
