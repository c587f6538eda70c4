"""HF <-> Megatron state dicts for Qwen3-MoE (Qwen3MoeForCausalLM), full (unsharded) tensors.

Megatron's dist_checkpointing reshards a full state dict onto any TP/PP/EP layout, so the
adapter only renames and re-lays tensors (torchtitan's state-dict-adapter way), no parallelism:
- q/k/v -> linear_qkv, grouped per KV head: [q heads of group g, k_g, v_g] for each group g;
- experts -> one entry per expert (SequentialMLP 'local_experts.{e}.linear_fc1', or TE's grouped
  'linear_fc1.weight{e}'), fc1 = [gate; up] stacked as HF's fused gate_up_proj already is;
- every Megatron name is the one of the Transformer Engine layer spec (the GPU model), the
  input norm as `self_attention.linear_qkv.layer_norm_weight`; lwm.models.megatron_names maps
  them onto a torch-only model's own names;
- HF holds experts fused ([E, 2I, H] gate_up_proj, [E, H, I] down_proj, transformers >= 5) or
  per expert on disk ('experts.{e}.gate_proj.weight'); both are read, the fused form written
  unless `per_expert=True`.
Every conversion checks that each layer's expert count is exactly num_experts (lwm.models.convert):
a converter that silently drops experts is the failure this guards against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

EXPERT_LAYOUTS = ("sequential", "te_grouped")


@dataclass
class Qwen3MoeLayout:
    arch: ClassVar[str] = "qwen3_moe"  # the family whose adapter converts this layout
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    tie_word_embeddings: bool

    @classmethod
    def from_model_config(cls, mcfg) -> Qwen3MoeLayout:
        if mcfg.arch != cls.arch:
            raise ValueError(f"model.arch = '{mcfg.arch}': Qwen3MoeLayout is for {cls.arch} "
                             "(lwm.models.convert.layout_for_model picks the adapter by arch)")
        return cls(mcfg.num_layers, mcfg.num_heads, mcfg.num_kv_heads, mcfg.head_dim, mcfg.num_experts,
                   mcfg.tie_word_embeddings)

    @classmethod
    def from_hf_config(cls, c) -> Qwen3MoeLayout:
        return cls(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                   getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                   c.num_experts, bool(c.tie_word_embeddings))


# Tensors that only change name (HF suffix after 'model.layers.{i}.', Megatron after 'decoder.layers.{i}.').
# The Megatron names are the Transformer Engine layer's (lwm.models.megatron_names): the input
# norm is fused into linear_qkv, the MoE layer keeps its own pre-MLP norm.
_LAYER_RENAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "self_attn.q_norm.weight": "self_attention.q_layernorm.weight",
    "self_attn.k_norm.weight": "self_attention.k_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight",
}


def _fuse_qkv(q, k, v, L: Qwen3MoeLayout) -> torch.Tensor:
    groups, per = L.num_kv_heads, L.num_heads // L.num_kv_heads
    hidden = q.shape[-1]
    q = q.view(groups, per * L.head_dim, hidden)
    k = k.view(groups, L.head_dim, hidden)
    v = v.view(groups, L.head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def _split_qkv(qkv, L: Qwen3MoeLayout):
    groups, per = L.num_kv_heads, L.num_heads // L.num_kv_heads
    hidden = qkv.shape[-1]
    qkv = qkv.view(groups, (per + 2) * L.head_dim, hidden)
    q, k, v = qkv.split([per * L.head_dim, L.head_dim, L.head_dim], dim=1)
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def _hf_experts(sd: dict, prefix: str, L: Qwen3MoeLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """([E, 2I, H] gate_up, [E, H, I] down) of one layer, from the fused or per-expert HF form."""
    fused = prefix + "mlp.experts.gate_up_proj"
    if fused in sd:
        gate_up, down = sd[fused], sd[prefix + "mlp.experts.down_proj"]
    else:
        idx = sorted({int(m.group(1)) for k in sd
                      if (m := re.fullmatch(re.escape(prefix) + r"mlp\.experts\.(\d+)\.gate_proj\.weight", k))})
        if idx != list(range(L.num_experts)):
            raise ValueError(f"{prefix}: found experts {idx[:4]}...({len(idx)}) in the HF state dict, "
                             f"expected 0..{L.num_experts - 1}")
        e = prefix + "mlp.experts.{}."
        gate_up = torch.stack([torch.cat([sd[e.format(i) + "gate_proj.weight"], sd[e.format(i) + "up_proj.weight"]])
                               for i in idx])
        down = torch.stack([sd[e.format(i) + "down_proj.weight"] for i in idx])
    if gate_up.shape[0] != L.num_experts or down.shape[0] != L.num_experts:
        raise ValueError(f"{prefix}: {gate_up.shape[0]} experts in the HF state dict, expected {L.num_experts}")
    return gate_up, down


def _mcore_expert_keys(layer: str, e: int, layout: str) -> tuple[str, str]:
    if layout == "sequential":
        return (f"{layer}mlp.experts.local_experts.{e}.linear_fc1.weight",
                f"{layer}mlp.experts.local_experts.{e}.linear_fc2.weight")
    if layout == "te_grouped":
        return f"{layer}mlp.experts.linear_fc1.weight{e}", f"{layer}mlp.experts.linear_fc2.weight{e}"
    raise ValueError(f"expert layout '{layout}': expected one of {EXPERT_LAYOUTS}")


def hf_view(sd):
    """The HF names this adapter reads (Qwen3-MoE checkpoints hold nothing else)."""
    return sd


def layer_to_megatron(sd, L: Qwen3MoeLayout, i: int, expert_layout: str = "sequential") -> dict:
    """Decoder layer i, HF -> Megatron (full tensors)."""
    h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
    out = {m + dst: sd[h + src] for src, dst in _LAYER_RENAMES.items()}
    out[m + "self_attention.linear_qkv.weight"] = _fuse_qkv(
        sd[h + "self_attn.q_proj.weight"], sd[h + "self_attn.k_proj.weight"], sd[h + "self_attn.v_proj.weight"], L)
    experts_to_megatron(out, sd, h, m, L, expert_layout)
    return out


def layer_to_hf(sd, L: Qwen3MoeLayout, i: int, expert_layout: str = "sequential",
                per_expert: bool = False) -> dict:
    """Decoder layer i, Megatron -> HF (full tensors)."""
    h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
    out = {h + src: sd[m + dst] for src, dst in _LAYER_RENAMES.items()}
    q, k, v = _split_qkv(sd[m + "self_attention.linear_qkv.weight"], L)
    out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"] = q, k
    out[h + "self_attn.v_proj.weight"] = v
    experts_to_hf(out, sd, h, m, L, expert_layout, per_expert)
    return out


def ends_to_megatron(sd: dict, L) -> dict:
    """Embedding, final norm and (untied) output layer, HF -> Megatron."""
    out = {"embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": sd["model.norm.weight"]}
    if not L.tie_word_embeddings:
        out["output_layer.weight"] = sd["lm_head.weight"]
    return out


def ends_to_hf(sd, L) -> dict:
    """Embedding, final norm and lm_head, Megatron -> HF."""
    return {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
            "model.norm.weight": sd["decoder.final_layernorm.weight"],
            "lm_head.weight": sd["embedding.word_embeddings.weight"] if L.tie_word_embeddings
            else sd["output_layer.weight"]}


def experts_to_megatron(out: dict, sd: dict, h: str, m: str, L, expert_layout: str) -> None:
    """One layer's routed experts, HF (layer prefix h) -> Megatron (layer prefix m), into out."""
    gate_up, down = _hf_experts(sd, h, L)
    for e in range(L.num_experts):
        fc1, fc2 = _mcore_expert_keys(m, e, expert_layout)
        out[fc1], out[fc2] = gate_up[e].contiguous(), down[e].contiguous()


def experts_to_hf(out: dict, sd: dict, h: str, m: str, L, expert_layout: str, per_expert: bool) -> None:
    """One layer's routed experts, Megatron -> HF (fused, or one tensor per expert), into out."""
    fc1 = [sd[_mcore_expert_keys(m, e, expert_layout)[0]] for e in range(L.num_experts)]
    fc2 = [sd[_mcore_expert_keys(m, e, expert_layout)[1]] for e in range(L.num_experts)]
    if per_expert:
        for e in range(L.num_experts):
            gate, up = fc1[e].chunk(2, dim=0)
            out[h + f"mlp.experts.{e}.gate_proj.weight"] = gate.contiguous()
            out[h + f"mlp.experts.{e}.up_proj.weight"] = up.contiguous()
            out[h + f"mlp.experts.{e}.down_proj.weight"] = fc2[e]
    else:
        out[h + "mlp.experts.gate_up_proj"] = torch.stack(fc1)
        out[h + "mlp.experts.down_proj"] = torch.stack(fc2)
