"""HF <-> Megatron state dicts for Qwen3.5-MoE (Qwen3_5MoeForCausalLM), full (unsharded) tensors.

Qwen3.5 interleaves Gated DeltaNet (linear attention) layers with gated full-attention layers
(`layer_types`), every layer followed by the routed experts plus one sigmoid-gated shared
expert. On the Megatron side that is a GPTModel built with experimental_attention_variant
'gated_delta_net' and zero-centred RMSNorm (`layernorm_zero_centered_gamma`). What changes
besides names:
- full attention: HF's q_proj holds, per head, the query rows then its output-gate rows; Megatron's
  linear_qkv holds, per KV group, [queries of the group, gates of the group, k, v];
- Gated DeltaNet: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a stack into one in_proj
  ([q, k, v, z, beta, alpha], the order Megatron splits it in and shards each part by TP);
- the DeltaNet output norm is a plain RMSNorm in HF (weight around 1) but zero-centred in
  Megatron like every other norm there, so it is stored minus one. The round trip through that
  shift is exact for weights in [0.5, 2] (x - 1 is then representable), which norm weights are
  in practice; the other tensors are only re-laid, so they come back bit for bit.
The released checkpoints are the vision-language model: its text weights sit under
'model.language_model.' and are read from there; vision ('model.visual.') weights have no place
in the text model and are left out, by name. Multi-token-prediction ('mtp.') weights have none
either: lwm.models.convert refuses them unless told to drop them (--drop-mtp), and only then
does this view leave them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lwm.models.qwen3_moe.adapter import (  # noqa: F401  (ends_*: the same embedding and head)
    Qwen3MoeLayout,
    ends_to_hf,
    ends_to_megatron,
    experts_to_hf,
    experts_to_megatron,
)

LINEAR, FULL = "linear_attention", "full_attention"
DROPPED_PREFIXES = ("model.visual.", "mtp.")


@dataclass
class Qwen35MoeLayout(Qwen3MoeLayout):
    """Qwen3-MoE's sizes plus the Gated DeltaNet ones and which layers are linear attention."""
    arch: ClassVar[str] = "qwen3_5_moe"
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    layer_types: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.layer_types) != self.num_layers or set(self.layer_types) - {LINEAR, FULL}:
            raise ValueError(f"layer_types must name {self.num_layers} layers, each '{LINEAR}' or '{FULL}': "
                             f"{self.layer_types}")

    @staticmethod
    def pattern(num_layers: int, full_attention_interval: int) -> list[str]:
        """Every full_attention_interval-th layer is full attention (HF's and Megatron's rule)."""
        return [FULL if (i + 1) % full_attention_interval == 0 else LINEAR for i in range(num_layers)]

    @classmethod
    def from_model_config(cls, mcfg) -> Qwen35MoeLayout:
        return cls(mcfg.num_layers, mcfg.num_heads, mcfg.num_kv_heads, mcfg.head_dim, mcfg.num_experts,
                   mcfg.tie_word_embeddings, mcfg.linear_num_key_heads, mcfg.linear_num_value_heads,
                   mcfg.linear_key_head_dim, mcfg.linear_value_head_dim,
                   cls.pattern(mcfg.num_layers, mcfg.full_attention_interval))

    @classmethod
    def from_hf_config(cls, c) -> Qwen35MoeLayout:
        c = getattr(c, "text_config", None) or c
        return cls(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_experts,
                   bool(c.tie_word_embeddings), c.linear_num_key_heads, c.linear_num_value_heads,
                   c.linear_key_head_dim, c.linear_value_head_dim, list(c.layer_types))

    @property
    def in_proj_split(self) -> list[int]:
        qk = self.linear_num_key_heads * self.linear_key_head_dim
        v = self.linear_num_value_heads * self.linear_value_head_dim
        return [2 * qk + v, v, self.linear_num_value_heads, self.linear_num_value_heads]


# HF suffix after 'model.layers.{i}.' -> Megatron suffix after 'decoder.layers.{i}.', in the names
# of the Transformer Engine spec (lwm.models.megatron_names): the input norm is fused into the
# layer's first projection (linear_qkv or the DeltaNet in_proj), the MoE keeps its pre-MLP norm.
_COMMON = {
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.shared_expert.down_proj.weight": "mlp.shared_experts.linear_fc2.weight",
    "mlp.shared_expert_gate.weight": "mlp.shared_experts.gate_weight",
}
_FULL = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "self_attn.q_norm.weight": "self_attention.q_layernorm.weight",
    "self_attn.k_norm.weight": "self_attention.k_layernorm.weight",
}
_LINEAR = {
    "input_layernorm.weight": "self_attention.in_proj.layer_norm_weight",
    "linear_attn.conv1d.weight": "self_attention.conv1d.weight",
    "linear_attn.dt_bias": "self_attention.dt_bias",
    "linear_attn.A_log": "self_attention.A_log",
    "linear_attn.out_proj.weight": "self_attention.out_proj.weight",
}


class _Renamed(Mapping):
    """A read-only view of a state dict under other names: tensors are fetched only when read,
    so a lazily loaded checkpoint stays lazy."""

    def __init__(self, sd, names: dict[str, str]):
        self._sd, self._names = sd, names

    def __getitem__(self, key):
        return self._sd[self._names[key]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def hf_view(sd):
    """The causal-LM text weights of an HF state dict, from either the text-only or the
    vision-language checkpoint layout, under the text-only names."""
    names = {}
    for k in sd:
        if not k.startswith(DROPPED_PREFIXES):
            names["model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else k] = k
    return _Renamed(sd, names)


def _fuse_gated_qkv(q_and_gate, k, v, L: Qwen35MoeLayout) -> torch.Tensor:
    groups, per, d = L.num_kv_heads, L.num_heads // L.num_kv_heads, L.head_dim
    hidden = k.shape[-1]
    qg = q_and_gate.view(groups, per, 2, d, hidden)
    q, g = qg[:, :, 0].reshape(groups, per * d, hidden), qg[:, :, 1].reshape(groups, per * d, hidden)
    return torch.cat([q, g, k.view(groups, d, hidden), v.view(groups, d, hidden)], dim=1).reshape(-1, hidden)


def _split_gated_qkv(qkv, L: Qwen35MoeLayout):
    groups, per, d = L.num_kv_heads, L.num_heads // L.num_kv_heads, L.head_dim
    hidden = qkv.shape[-1]
    q, g, k, v = qkv.view(groups, (2 * per + 2) * d, hidden).split([per * d, per * d, d, d], dim=1)
    q_and_gate = torch.stack([q.reshape(groups, per, d, hidden), g.reshape(groups, per, d, hidden)], dim=2)
    return q_and_gate.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def layer_to_megatron(sd, L: Qwen35MoeLayout, i: int, expert_layout: str = "sequential") -> dict:
    """Decoder layer i, HF -> Megatron (full tensors)."""
    kind, h, m = L.layer_types[i], f"model.layers.{i}.", f"decoder.layers.{i}."
    out = {m + dst: sd[h + src] for src, dst in {**_COMMON, **(_FULL if kind == FULL else _LINEAR)}.items()}
    out[m + "mlp.shared_experts.linear_fc1.weight"] = torch.cat(
        [sd[h + "mlp.shared_expert.gate_proj.weight"], sd[h + "mlp.shared_expert.up_proj.weight"]])
    if kind == FULL:
        out[m + "self_attention.linear_qkv.weight"] = _fuse_gated_qkv(
            sd[h + "self_attn.q_proj.weight"], sd[h + "self_attn.k_proj.weight"], sd[h + "self_attn.v_proj.weight"], L)
    else:
        a = h + "linear_attn."
        out[m + "self_attention.in_proj.weight"] = torch.cat(
            [sd[a + f"in_proj_{p}.weight"] for p in ("qkv", "z", "b", "a")])
        out[m + "self_attention.out_norm.weight"] = sd[a + "norm.weight"] - 1
    experts_to_megatron(out, sd, h, m, L, expert_layout)
    return out


def layer_to_hf(sd, L: Qwen35MoeLayout, i: int, expert_layout: str = "sequential",
                per_expert: bool = False) -> dict:
    """Decoder layer i, Megatron -> HF (full tensors)."""
    kind, h, m = L.layer_types[i], f"model.layers.{i}.", f"decoder.layers.{i}."
    out = {h + src: sd[m + dst] for src, dst in {**_COMMON, **(_FULL if kind == FULL else _LINEAR)}.items()}
    gate, up = sd[m + "mlp.shared_experts.linear_fc1.weight"].chunk(2, dim=0)
    out[h + "mlp.shared_expert.gate_proj.weight"] = gate.contiguous()
    out[h + "mlp.shared_expert.up_proj.weight"] = up.contiguous()
    if kind == FULL:
        q, k, v = _split_gated_qkv(sd[m + "self_attention.linear_qkv.weight"], L)
        out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"] = q, k
        out[h + "self_attn.v_proj.weight"] = v
    else:
        a = h + "linear_attn."
        parts = sd[m + "self_attention.in_proj.weight"].split(L.in_proj_split, dim=0)
        for p, t in zip(("qkv", "z", "b", "a"), parts):
            out[a + f"in_proj_{p}.weight"] = t.contiguous()
        out[a + "norm.weight"] = sd[m + "self_attention.out_norm.weight"] + 1
    experts_to_hf(out, sd, h, m, L, expert_layout, per_expert)
    return out
