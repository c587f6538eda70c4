"""Model families behind one registry: `family(model.arch)` is the only place an arch is looked
up; the generic code asks the family and never branches on the name.

    hf.py            build_config / build_model / load_model (HF transformers)
    megatron.py      TransformerConfig, layer spec and GPTModel for the megatron backend
    convert.py       HF <-> Megatron state dicts, layer by layer (`python -m lwm.models.convert`)
    megatron_ckpt.py HF checkpoints in and out of Megatron dist checkpoints, one rank
                     (`python -m lwm.models.megatron_ckpt import|export ...`)
    megatron_names.py checkpoint names (the Transformer Engine spec's) of a Megatron model's tensors
    safetensors_io.py lazy reading and sharded writing of safetensors checkpoints
    <family>/        one folder per architecture: HF config, Megatron config and layer spec,
                     state-dict adapter, parallel-layout checks (a `ModelFamily` subclass)

Adding a family: copy a family folder (say qwen3_moe/) to `lwm/models/<arch>/`, implement every
hook of `ModelFamily` (family.py) there, and add its instance to FAMILIES below. Nothing else
changes: configs select it with `model.arch: <arch>`; tests/test_convert.py shows the round trip
its adapter must pass.
"""

from __future__ import annotations

from lwm.models.family import ModelFamily
from lwm.models.qwen3_5_moe import Qwen35Moe
from lwm.models.qwen3_moe import Qwen3Moe

FAMILIES: dict[str, ModelFamily] = {f.arch: f for f in (Qwen3Moe(), Qwen35Moe())}


def family(arch: str) -> ModelFamily:
    """The family of model.arch, or a ValueError naming the known ones."""
    if arch not in FAMILIES:
        raise ValueError(f"model.arch = '{arch}': unknown model family (known: {', '.join(FAMILIES)})")
    return FAMILIES[arch]


def family_for_hf(model_type: str) -> ModelFamily:
    """The family that reads HF checkpoints of config.model_type."""
    for f in FAMILIES.values():
        if model_type in f.hf_model_types:
            return f
    known = [t for f in FAMILIES.values() for t in f.hf_model_types]
    raise ValueError(f"HF model_type '{model_type}' has no model family (known: {', '.join(known)})")


__all__ = ["FAMILIES", "ModelFamily", "family", "family_for_hf"]
