"""Config translation: our typed config -> DeepSpeed JSON and Megatron TransformerConfig, and the
parallel layout checks that fail with the names of the fields that do not divide."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from launch import CONFIG_DIR
from lwm.config import BackendConfig, CptConfig, ModelConfig, register_configs
from lwm.models.megatron import transformer_config
from lwm.parallel_config import parallel_plan, world_size_of
from lwm.train.engines.deepspeed import ds_config


def compose_cfg(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("config", overrides=["run_dir=/tmp/unused", *overrides])


def backend(name="deepspeed", **fields):
    b = BackendConfig(name=name)
    for k, v in fields.items():
        section, key = k.split("__")
        setattr(getattr(b, section), key, v)
    return b


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_json_per_zero_stage(stage):
    tcfg = CptConfig(batch_size=4, grad_accum=3, max_grad_norm=0.5, lr=1e-4, weight_decay=0.1)
    b = backend(deepspeed__zero_stage=stage)
    b.dtype = "bfloat16"
    cfg = ds_config(b, tcfg, world_size=8)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 4 * 3 * 8
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["stage"] == stage
    # the optimizer and schedule are the one definition (lwm.train.optim), handed to DeepSpeed
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert ("stage3_prefetch_bucket_size" in cfg["zero_optimization"]) == (stage == 3)
    assert "offload_optimizer" not in cfg["zero_optimization"]


def test_deepspeed_offload_options():
    b = backend(deepspeed__zero_stage=3, deepspeed__offload_optimizer="cpu", deepspeed__offload_param="nvme",
                deepspeed__nvme_path="/scratch/nvme")
    z = ds_config(b, CptConfig(), 2)["zero_optimization"]
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z["offload_param"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/scratch/nvme"}
    # torch AdamW with an offloaded optimizer must be allowed explicitly
    assert ds_config(b, CptConfig(), 2)["zero_force_ds_cpu_optimizer"] is False


@pytest.mark.parametrize("fields,message", [
    (dict(deepspeed__zero_stage=4), "backend.deepspeed.zero_stage"),
    (dict(deepspeed__zero_stage=2, deepspeed__offload_param="cpu"), "offload_param needs zero_stage = 3"),
    (dict(deepspeed__zero_stage=0, deepspeed__offload_optimizer="cpu"), "offload_optimizer needs zero_stage"),
    (dict(deepspeed__offload_optimizer="disk"), "backend.deepspeed.offload_optimizer"),
])
def test_deepspeed_bad_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        ds_config(backend(**fields), CptConfig(), 2)


def test_deepspeed_keeps_every_expert_on_every_rank():
    """The HF MoE blocks train data-parallel under DeepSpeed; expert parallelism is Megatron's,
    and a DeepSpeed expert-parallel knob that nothing wires does not exist."""
    m = ModelConfig(num_experts=8)
    plan = parallel_plan(m, backend(), 4)
    assert (plan.ep, plan.dp, plan.num_local_experts) == (1, 4, 8)
    assert not hasattr(BackendConfig().deepspeed, "ep_size")
    assert not hasattr(BackendConfig().megatron, "virtual_pipeline_parallel")


def test_megatron_transformer_config_tiny():
    m = ModelConfig()
    b = backend("megatron", megatron__expert_parallel=2, megatron__token_dispatcher="allgather",
                megatron__grouped_gemm=False, megatron__router_load_balancing="seq_aux_loss",
                megatron__z_loss_coef=1e-3, megatron__recompute_granularity="selective")
    b.dtype = "float32"
    tc = transformer_config(m, b)
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == \
        (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim)
    assert (tc.num_moe_experts, tc.moe_router_topk, tc.moe_ffn_hidden_size) == (8, 2, 256)
    assert tc.expert_model_parallel_size == 2 and tc.moe_token_dispatcher_type == "allgather"
    assert tc.moe_router_load_balancing_type == "seq_aux_loss"
    assert tc.moe_aux_loss_coeff == m.router_aux_loss_coef  # < 0 means: the model's coefficient
    assert tc.moe_z_loss_coeff == 1e-3 and tc.moe_grouped_gemm is False
    assert tc.qk_layernorm and tc.gated_linear_unit and tc.normalization == "RMSNorm"
    assert tc.recompute_granularity == "selective" and tc.params_dtype == torch.float32
    assert not tc.add_bias_linear and tc.moe_router_pre_softmax is False


def test_megatron_parallel_sizes_that_do_not_divide_name_the_fields():
    m = ModelConfig(num_heads=4, num_kv_heads=2, num_experts=8, num_layers=4)
    bad = backend("megatron", megatron__tensor_parallel=3, megatron__expert_parallel=3,
                  megatron__pipeline_parallel=3, megatron__sequence_parallel=True)
    with pytest.raises(ValueError) as err:
        parallel_plan(m, bad, world_size=8)
    text = str(err.value)
    for piece in ("model.num_heads = 4 is not divisible by backend.megatron.tensor_parallel = 3",
                  "model.num_kv_heads = 2 is not divisible by backend.megatron.tensor_parallel = 3",
                  "model.num_experts = 8 is not divisible by backend.megatron.expert_parallel = 3",
                  "model.num_layers = 4 is not divisible by backend.megatron.pipeline_parallel",
                  "world size (cluster.nodes * cluster.gpus_per_node) = 8 is not divisible by "
                  "tensor_parallel * pipeline_parallel * context_parallel = 9"):
        assert piece in text
    with pytest.raises(ValueError, match="sequence_parallel must be true"):
        parallel_plan(m, backend("megatron", megatron__tensor_parallel=2), world_size=2)
    ok = parallel_plan(m, backend("megatron", megatron__tensor_parallel=2, megatron__sequence_parallel=True,
                                  megatron__expert_parallel=4), world_size=8)
    assert (ok.dp, ok.expert_dp, ok.num_local_experts) == (4, 2, 2)


def test_megatron_layouts_that_train_wrongly_are_refused():
    m = ModelConfig(num_heads=4, num_kv_heads=2, num_experts=8)
    # EP 1 with ETP != TP: Megatron would reduce the expert gradients over the dense DP group
    with pytest.raises(ValueError, match=r"expert_tensor_parallel \(1\) must equal tensor_parallel \(2\)"):
        parallel_plan(m, backend("megatron", megatron__tensor_parallel=2, megatron__sequence_parallel=True),
                      world_size=2)
    for ok in ({"megatron__expert_tensor_parallel": 2}, {"megatron__expert_parallel": 2}):
        parallel_plan(m, backend("megatron", megatron__tensor_parallel=2, megatron__sequence_parallel=True, **ok),
                      world_size=2)
    hybrid = ModelConfig(arch="qwen3_5_moe", num_heads=4, num_kv_heads=2, num_experts=8,
                         linear_num_key_heads=2, linear_num_value_heads=6, shared_expert_intermediate_size=64)
    with pytest.raises(ValueError) as err:
        parallel_plan(hybrid, backend("megatron", megatron__tensor_parallel=4, megatron__sequence_parallel=True,
                                      megatron__expert_tensor_parallel=4, megatron__context_parallel=2),
                      world_size=8)
    for piece in ("model.num_kv_heads = 2 is not divisible by backend.megatron.tensor_parallel = 4",
                  "model.linear_num_key_heads = 2 is not divisible",
                  "model.linear_num_value_heads = 6 is not divisible",
                  "context_parallel must be 1 for qwen3_5_moe"):
        assert piece in str(err.value)


def test_preset_35b_plan_on_8xh100():
    cfg = compose_cfg("model=qwen3_5_35b_a3b", "backend=megatron", "cluster=slurm_8xh100")
    world = world_size_of(cfg.cluster)
    plan = parallel_plan(cfg.model, cfg.backend, world)
    assert (world, plan.tp, plan.pp, plan.ep, plan.dp, plan.num_local_experts) == (8, 1, 2, 4, 4, 64)
    tc = transformer_config(cfg.model, cfg.backend)
    assert tc.num_moe_experts == 256 and tc.moe_router_topk == 8 and tc.num_layers == 40
    assert tc.experimental_attention_variant == "gated_delta_net" and tc.linear_attention_freq == 4
    assert tc.moe_shared_expert_intermediate_size == 512 and tc.moe_shared_expert_gate
    assert tc.layernorm_zero_centered_gamma and tc.attention_output_gate
    assert tc.recompute_granularity == "full" and tc.bf16


def test_preset_397b_plan_on_128xh100():
    cfg = compose_cfg("model=qwen3_5_397b_a17b", "backend=megatron", "cluster=slurm_128xh100")
    plan = parallel_plan(cfg.model, cfg.backend, world_size_of(cfg.cluster))
    assert (plan.world_size, plan.tp, plan.pp, plan.ep, plan.dp, plan.expert_dp) == (128, 2, 4, 32, 16, 1)
    assert plan.num_local_experts == 16 and plan.layers_per_stage == 15
    tc = transformer_config(cfg.model, cfg.backend)
    assert tc.sequence_parallel and tc.num_moe_experts == 512 and tc.moe_router_topk == 10
    # the 397B plan on one node: refused by name
    with pytest.raises(ValueError, match="expert_tensor_parallel \\* expert_parallel \\* pipeline_parallel"):
        parallel_plan(cfg.model, cfg.backend, 8)
