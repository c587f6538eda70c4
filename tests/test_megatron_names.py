"""Converted Megatron checkpoints carry the names of the Transformer Engine model that
`backend=megatron` builds on GPUs, for every family and both expert layouts:
- `python -m lwm.models.convert hf2mcore` writes exactly the TE model's state_dict names;
- `python -m lwm.models.megatron_ckpt import` (the torch-only model on the CPU) writes exactly
  the TE model's dist checkpoint keys, so a GPU run loads it (before, Qwen3-MoE's pre-MLP norm
  went in as TE's dense-MLP `mlp.linear_fc1.layer_norm_weight`, which no TE MoE layer loads);
- those names are the ones Megatron-Bridge maps HF checkpoints to;
- multi-token-prediction weights are refused by name, or dropped knowingly and recorded.
The TE model comes from megatron-core's own TE spec with stand-ins for TE's leaf modules
(tests/helpers/megatron_te_names.py): Transformer Engine does not install without a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lwm.models.convert import main

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "tests" / "helpers" / "megatron_site"

# Megatron-side parameter names of Megatron-Bridge's mapping tables, read from
# github.com/NVIDIA-NeMo/Megatron-Bridge at commit 067f987df03b8355b03192d88d70f1709fedf51a:
# src/megatron/bridge/models/qwen/qwen3_moe_bridge.py (Qwen3MoEBridge.mapping_registry) and
# src/megatron/bridge/models/qwen/qwen35_bridge.py (Qwen35MoEBridge._get_moe_lm_mappings,
# _moe_routed_expert_mappings). '*' is a layer or expert number.
BRIDGE_COMMON = [
    "embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight",
    "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight",
    "decoder.layers.*.self_attention.linear_qkv.weight",
    "decoder.layers.*.self_attention.q_layernorm.weight", "decoder.layers.*.self_attention.k_layernorm.weight",
    "decoder.layers.*.self_attention.linear_proj.weight",
    "decoder.layers.*.pre_mlp_layernorm.weight", "decoder.layers.*.mlp.router.weight",
]
BRIDGE_EXPERTS = {
    "te_grouped": ["decoder.layers.*.mlp.experts.linear_fc1.weight*",
                   "decoder.layers.*.mlp.experts.linear_fc2.weight*"],
    "sequential": ["decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
                   "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight"],
}
BRIDGE_QWEN3_5 = [  # Gated DeltaNet layers and the gated shared expert
    "decoder.layers.*.self_attention.in_proj.layer_norm_weight", "decoder.layers.*.self_attention.in_proj.weight",
    "decoder.layers.*.self_attention.conv1d.weight", "decoder.layers.*.self_attention.A_log",
    "decoder.layers.*.self_attention.dt_bias", "decoder.layers.*.self_attention.out_norm.weight",
    "decoder.layers.*.self_attention.out_proj.weight",
    "decoder.layers.*.mlp.shared_experts.linear_fc1.weight", "decoder.layers.*.mlp.shared_experts.linear_fc2.weight",
    "decoder.layers.*.mlp.shared_experts.gate_weight",
]


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen3_5_moe"])
def names(request, tmp_path_factory):
    """(arch, its run of tests/helpers/megatron_te_names.py: the JSON and the folder it wrote)."""
    out = tmp_path_factory.mktemp(request.param)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "megatron_te_names.py"), request.param,
                          str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return request.param, json.loads((out / "names.json").read_text()), out


def _bridge_pattern(name: str) -> str | None:
    for layout, experts in BRIDGE_EXPERTS.items():
        for p in [*BRIDGE_COMMON, *BRIDGE_QWEN3_5, *experts]:
            if re.fullmatch(re.escape(p).replace(r"\*", r"\d+"), name):
                return p
    return None


@pytest.mark.parametrize("layout", ["te_grouped", "sequential"])
def test_hf2mcore_writes_the_te_models_names(names, tmp_path, layout):
    arch, got, out = names
    dst = tmp_path / "mcore.safetensors"
    main(["hf2mcore", str(out / "hf"), str(dst), "--expert-layout", layout])
    written = set(load_file(str(dst)))
    assert written == set(got["te"][layout]["state"])
    # and each is a name Megatron-Bridge maps, every one of its tables' names in use
    used = {_bridge_pattern(k) for k in written}
    assert None not in used, sorted(k for k in written if _bridge_pattern(k) is None)
    want = {*BRIDGE_COMMON, *BRIDGE_EXPERTS[layout], *(BRIDGE_QWEN3_5 if arch == "qwen3_5_moe" else ())}
    assert used == want


def test_the_cpu_import_writes_the_te_checkpoint_keys(names):
    _, got, _ = names
    assert got["imported"] == got["te"]["sequential"]["sharded"] == got["te"]["te_grouped"]["sharded"]
    # layers stacked under one key (qwen3_moe) or one key per layer (the hybrid qwen3_5_moe)
    assert any(re.fullmatch(r"decoder\.layers\.(\d+\.)?pre_mlp_layernorm\.weight", k) for k in got["imported"])
    assert not [k for k in got["imported"] if "mlp.linear_fc1.layer_norm" in k]  # no dense-MLP names on MoE


def test_mtp_weights_are_refused_by_name_or_dropped_knowingly(names, tmp_path):
    arch, got, out = names
    assert got["import_record"]["dropped_mtp"] == ["mtp.fc.weight"]  # the CPU import, with drop_mtp
    src = tmp_path / "hf"
    src.mkdir()
    for f in out.joinpath("hf").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    save_file({"mtp.layers.0.input_layernorm.weight": torch.ones(4), "mtp.fc.weight": torch.zeros(4, 8)},
              str(src / "mtp.safetensors"))
    dst = tmp_path / "mcore.safetensors"
    with pytest.raises(ValueError, match=r"2 multi-token-prediction tensors \(first: 'mtp.fc.weight'\).*"
                                         r"not converted.*--drop-mtp"):
        main(["hf2mcore", str(src), str(dst)])
    assert not dst.exists()
    main(["hf2mcore", str(src), str(dst), "--drop-mtp"])
    with safe_open(str(dst), framework="pt") as f:
        assert "2 multi-token-prediction tensors" in f.metadata()["dropped_mtp"]
        assert set(f.keys()) == set(got["te"]["sequential"]["state"])
