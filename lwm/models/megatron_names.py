"""Checkpoint names of a Megatron model's tensors: the names of the Transformer Engine spec that
`backend=megatron` builds on GPUs, whichever spec built the model at hand.

Conversion (lwm.models.convert, lwm.models.megatron_ckpt) always writes these names. A model
built from Megatron's torch-only layers (the CPU, the one-rank import and export) names some
tensors differently in its own state_dict: its separate input norm is TE's
`self_attention.linear_qkv.layer_norm_weight` (the norm fused into the next projection). Each
layer spec records the difference in `sharded_state_dict_keys_map`, which dist_checkpointing
applies when it saves and loads; the functions here apply the same map to plain state dicts,
so the one map is the single source of both.
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")  # this pipeline stage's layer index


def checkpoint_names(model) -> dict[str, str]:
    """{name in model.state_dict(): name in checkpoints} for every tensor of a GPTModel that
    holds every layer (one pipeline stage, as the one-rank import and export build); a name
    differs only where its layer's keys map says so."""
    maps = [getattr(getattr(layer, "submodules_config", None), "sharded_state_dict_keys_map", None) or {}
            for layer in model.decoder.layers]
    names = {}
    for key in model.state_dict(keep_vars=True):
        names[key] = key
        if m := _LAYER.match(key):
            rest = key[m.end():]
            for own, saved in maps[int(m.group(1))].items():
                if rest.startswith(own):
                    names[key] = m.group(0) + saved + rest[len(own):]
                    break
    return names


def to_checkpoint_names(model, sd: dict) -> dict:
    """The model's own state dict (or a part of it) under checkpoint names."""
    names = checkpoint_names(model)
    return {names.get(k, k): v for k, v in sd.items()}


def to_model_names(model, sd: dict) -> dict:
    """A state dict under checkpoint names (or a part of it) under the model's own names."""
    own = {saved: key for key, saved in checkpoint_names(model).items()}
    return {own.get(k, k): v for k, v in sd.items()}
