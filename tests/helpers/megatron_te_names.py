"""Run with tests/helpers/megatron_site on PYTHONPATH: `python tests/helpers/megatron_te_names.py ARCH OUT_DIR`.

The tensor names of the Transformer Engine model that `backend=megatron` builds on a GPU, on a
machine without Transformer Engine, and the names the one-rank import writes into a dist
checkpoint, for a tiny model of ARCH whose HF checkpoint it leaves in OUT_DIR/hf; as JSON in
OUT_DIR/names.json:
- "te": {layout: {"state": [state_dict names], "sharded": [dist checkpoint keys]}} for the
  experts as TE's grouped GEMM (te_grouped) and as SequentialMLP of TE linears (sequential);
- "imported": the dist checkpoint keys `lwm.models.megatron_ckpt import` wrote (the CPU path),
  from the HF checkpoint plus a multi-token-prediction tensor, dropped with drop_mtp=True;
- "import_record": what that import recorded of the drop (OUT_DIR/mcore/lwm_import.json).
`_extra_state` entries (TE's FP8 metadata, no weights) are left out of every list.

The TE model is megatron-core's own: the family's `layer_spec(use_te=True)` (megatron-core's TE
spec functions), built into a GPTModel by megatron-core, so every module, the keys maps and the
sharded keys are Megatron's. Only TE's leaf modules, which cannot be built without TE, are
stand-ins holding the parameters TE's modules hold:
    TENorm                              weight (+ bias for LayerNorm)       te.pytorch.RMSNorm/LayerNorm
    TELayerNormColumnParallelLinear     weight, layer_norm_weight (+ biases) te.pytorch.LayerNormLinear
    TEColumn/RowParallelLinear, TELinear weight (+ bias)                    te.pytorch.Linear
    TEColumn/RowParallelGroupedLinear   weight0..weight{E-1} (+ bias{e})    te.pytorch.GroupedLinear
    TEDotProductAttention               nothing                             te.pytorch.DotProductAttention
(their sharded keys as megatron-core 0.16.1's wrappers in megatron/core/extensions/
transformer_engine.py make them). tests/test_megatron_names.py cross-checks the result with
Megatron-Bridge's mapping tables.
"""

import contextlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

if __name__ == "__main__":
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import apply_factories
    from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
    from megatron.core.extensions import transformer_engine_spec_provider as provider
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt import experimental_attention_variant_module_specs as hybrid_specs
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import FileSystemReader

    from lwm.config import BackendConfig, ModelConfig
    from lwm.models import family
    from lwm.models.hf import build_model as build_hf
    from lwm.models.megatron import gpt_kwargs, transformer_config
    from lwm.models.megatron_ckpt import import_hf

    class TENorm(torch.nn.Module):
        def __init__(self, config, hidden_size, eps=1e-5):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(hidden_size))
            if config.normalization == "LayerNorm":
                self.bias = torch.nn.Parameter(torch.empty(hidden_size))

    class TEColumnParallelLinear(ColumnParallelLinear):
        pass

    class TERowParallelLinear(RowParallelLinear):
        pass

    class TELayerNormColumnParallelLinear(ColumnParallelLinear):
        def __init__(self, input_size, output_size, *, config, **kw):
            super().__init__(input_size, output_size, config=config, **kw)
            self.layer_norm_weight = torch.nn.Parameter(torch.empty(input_size))
            if config.normalization == "LayerNorm":
                self.layer_norm_bias = torch.nn.Parameter(torch.empty(input_size))

    class TEDotProductAttention(DotProductAttention):
        pass

    class _GroupedLinear(torch.nn.Module):
        tp_axis = 0

        def __init__(self, num_gemms, input_size, output_size, *, config, bias, **_):
            super().__init__()
            self.num_gemms = num_gemms
            for e in range(num_gemms):
                self.register_parameter(f"weight{e}", torch.nn.Parameter(torch.empty(output_size, input_size)))
                if bias:
                    self.register_parameter(f"bias{e}", torch.nn.Parameter(torch.empty(output_size)))

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            # as TEGroupedLinear._sharded_state_dict_grouped: gemm e is expert e of one key (EP = 1)
            out = {}
            for e in range(self.num_gemms):
                sd = {f"{e}.{p}": getattr(self, f"{p}{e}") for p in ("weight", "bias") if hasattr(self, f"{p}{e}")}
                sub = make_sharded_tensors_for_checkpoint(sd, "", dict.fromkeys(sd, self.tp_axis),
                                                          (*sharded_offsets, (len(sharded_offsets), e, self.num_gemms)))
                replace_prefix_for_sharding(sub, f"{e}.", prefix)
                out.update({f"{prefix}{k.split('.')[1]}{e}": v for k, v in sub.items()})
            return out

    class TEColumnParallelGroupedLinear(_GroupedLinear):
        pass

    class TERowParallelGroupedLinear(_GroupedLinear):
        tp_axis = 1

    stand_ins = dict(TENorm=TENorm, TELinear=TEColumnParallelLinear, TEColumnParallelLinear=TEColumnParallelLinear,
                     TERowParallelLinear=TERowParallelLinear,
                     TELayerNormColumnParallelLinear=TELayerNormColumnParallelLinear,
                     TEDotProductAttention=TEDotProductAttention,
                     TEColumnParallelGroupedLinear=TEColumnParallelGroupedLinear,
                     TERowParallelGroupedLinear=TERowParallelGroupedLinear)

    def names(model) -> dict:
        state = [k for k in model.state_dict() if not k.endswith("_extra_state")]
        sharded_sd = model.sharded_state_dict()
        apply_factories(sharded_sd)  # e.g. the DeltaNet in_proj, saved as its q, k, v, z, beta, alpha parts
        sharded = {v.key for v in nested_values(sharded_sd)}
        return {"state": sorted(state), "sharded": sorted(k for k in sharded if not k.endswith("_extra_state"))}

    def te_spec_without_te():
        """megatron-core's TE spec functions, which import TE's spec provider only where TE is,
        building their module tree from the stand-ins."""
        stack = contextlib.ExitStack()
        for name, cls in stand_ins.items():
            stack.enter_context(mock.patch.object(provider, name, cls))
        stack.enter_context(mock.patch.object(provider, "is_te_min_version", lambda *a, **k: True))
        for module in (gpt_layer_specs, hybrid_specs):
            stack.enter_context(mock.patch.object(module, "TESpecProvider", provider.TESpecProvider, create=True))
        return stack

    def te_model(mcfg, grouped: bool):
        """The GPU model of `backend=megatron` (the family's layer_spec with use_te=True)."""
        b = BackendConfig(name="megatron")
        b.megatron.grouped_gemm = grouped
        tc = transformer_config(mcfg, b, use_cpu_initialization=True)
        with te_spec_without_te():
            spec = family(mcfg.arch).layer_spec(tc, mcfg, use_te=True)
        with torch.device("meta"):
            return GPTModel(config=tc, transformer_layer_spec=spec, **gpt_kwargs(mcfg, 512, 64))

    arch, out = sys.argv[1], Path(sys.argv[2])  # writes out/hf (the HF model), out/mcore, out/names.json
    mcfg = ModelConfig(arch=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       intermediate_size=128, moe_intermediate_size=64, num_experts=4, tie_word_embeddings=False)
    if arch == "qwen3_5_moe":  # 3 DeltaNet layers, then gated attention
        mcfg.num_layers, mcfg.shared_expert_intermediate_size, mcfg.partial_rotary_factor = 4, 48, 0.25
        mcfg.linear_num_key_heads, mcfg.linear_num_value_heads = 2, 4
        mcfg.linear_key_head_dim, mcfg.linear_value_head_dim = 16, 8
    torch.manual_seed(0)
    build_hf(mcfg, 512).save_pretrained(out / "hf", safe_serialization=True)
    # the import reads a copy with a multi-token-prediction tensor, dropped knowingly
    shutil.copytree(out / "hf", out / "hf_mtp")
    save_file({"mtp.fc.weight": torch.zeros(4, 4)}, str(out / "hf_mtp" / "mtp.safetensors"))
    cfg = SimpleNamespace(model=mcfg, backend=BackendConfig(name="megatron"), seed=0, data=SimpleNamespace(seq_len=64))
    import_hf(cfg, out / "hf_mtp", out / "mcore", 512, drop_mtp=True)
    saved = FileSystemReader(str(out / "mcore")).read_metadata().state_dict_metadata
    # import_hf left a one-rank parallel state: the TE models are built in it
    assert ps.get_tensor_model_parallel_world_size() == 1
    result = {"te": {"te_grouped": names(te_model(mcfg, True)), "sequential": names(te_model(mcfg, False))},
              "imported": sorted(k for k in saved if "_extra_state" not in k),
              "import_record": json.loads((out / "mcore" / "lwm_import.json").read_text())}
    (out / "names.json").write_text(json.dumps(result, indent=1))
