"""The megatron backend's model: megatron-core GPTModel with MoE, configured from our typed config.

`transformer_config` is the one place our model/backend fields become Megatron's names; the
same numbers build the HF model, so a converted checkpoint loads into either. The architecture
(activation, norms, attention variant) and the layer spec come from the model's family.
"""

from __future__ import annotations

from lwm.models import family


def transformer_config(mcfg, bcfg, use_cpu_initialization: bool = False):
    """Megatron's TransformerConfig for our model and backend config (sizes not yet validated
    against a world size: see `lwm.parallel_config.parallel_plan`)."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    from lwm.models.hf import DTYPES
    m = bcfg.megatron
    if m.router_load_balancing not in ("aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"):
        raise ValueError(f"backend.megatron.router_load_balancing = '{m.router_load_balancing}': "
                         "aux_loss | seq_aux_loss | global_aux_loss | sinkhorn | none")
    arch = family(mcfg.arch).megatron_config(mcfg)
    dtype = DTYPES[bcfg.dtype]
    recompute = m.recompute_granularity or None
    kw = dict(
        num_layers=mcfg.num_layers, hidden_size=mcfg.hidden_size,
        num_attention_heads=mcfg.num_heads, num_query_groups=mcfg.num_kv_heads, kv_channels=mcfg.head_dim,
        ffn_hidden_size=mcfg.intermediate_size, hidden_dropout=0.0, attention_dropout=0.0,
        num_moe_experts=mcfg.num_experts, moe_ffn_hidden_size=mcfg.moe_intermediate_size,
        moe_router_topk=mcfg.experts_per_token,
        moe_router_load_balancing_type=m.router_load_balancing,
        moe_aux_loss_coeff=(m.aux_loss_coef if m.aux_loss_coef >= 0 else mcfg.router_aux_loss_coef),
        moe_z_loss_coeff=m.z_loss_coef or None,
        moe_router_dtype=m.router_dtype or None,
        moe_expert_capacity_factor=m.capacity_factor or None,
        moe_token_dispatcher_type=m.token_dispatcher, moe_grouped_gemm=m.grouped_gemm,
        moe_permute_fusion=m.permute_fusion,
        tensor_model_parallel_size=m.tensor_parallel, pipeline_model_parallel_size=m.pipeline_parallel,
        context_parallel_size=m.context_parallel, expert_model_parallel_size=m.expert_parallel,
        expert_tensor_parallel_size=m.expert_tensor_parallel, sequence_parallel=m.sequence_parallel,
        recompute_granularity=recompute,
        recompute_method=m.recompute_method if recompute == "full" else None,
        recompute_num_layers=m.recompute_num_layers if recompute == "full" else None,
        recompute_modules=list(m.recompute_modules) if recompute == "selective" else None,
        bf16=dtype == torch.bfloat16, params_dtype=dtype, pipeline_dtype=dtype,
        use_cpu_initialization=use_cpu_initialization,
        **arch,
    )
    if recompute is None:
        kw.pop("recompute_modules")
    return TransformerConfig(**kw)


def layer_spec(tc, mcfg, use_te: bool):
    """Transformer Engine layers on GPUs; torch-only ('local') layers otherwise, where the
    experts are one MLP each (SequentialMLP), since grouped GEMM needs TE."""
    if tc.moe_grouped_gemm and not use_te:
        raise ValueError("backend.megatron.grouped_gemm needs Transformer Engine: set it false without TE")
    return family(mcfg.arch).layer_spec(tc, mcfg, use_te)


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
    if not use_te:
        # megatron-core 0.16.1's router names `te_general_gemm` whether or not Transformer Engine
        # imported (a NameError at the first MoE step without it); None is its "no TE" value.
        from megatron.core.transformer.moe import moe_utils
        if not hasattr(moe_utils, "te_general_gemm"):
            moe_utils.te_general_gemm = None
    if vocab_size % bcfg.megatron.tensor_parallel:
        raise ValueError(f"vocab size {vocab_size} is not divisible by backend.megatron.tensor_parallel = "
                         f"{bcfg.megatron.tensor_parallel} (set model.vocab_size to a padded size)")
    tc = transformer_config(mcfg, bcfg, use_cpu_initialization=cpu_init)
    return GPTModel(config=tc, transformer_layer_spec=layer_spec(tc, mcfg, use_te),
                    pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
                    **gpt_kwargs(mcfg, vocab_size, seq_len))
