"""HF models: one built from config (its family makes the HF config), or a local HF checkpoint
(safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from lwm.models import attention  # noqa: F401  (registers model.attn_implementation=sdpa_packed)
from lwm.models import family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(mcfg, vocab_size: int, tok=None) -> PreTrainedModel:
    """A fresh model from the model config (no hub access)."""
    config, cls = build_config(mcfg, vocab_size, tok)
    model = cls(config)
    _set_experts_impl(model, mcfg.experts_implementation)
    return model


def build_config(mcfg, vocab_size: int, tok=None):
    """(HF config, model class) for the model config, made by its family. Its vocabulary is the
    tokenizer's (vocab_size) unless model.vocab_size pads it, as the published layouts and
    tensor parallelism (rows split over TP ranks) want."""
    if mcfg.vocab_size:
        if mcfg.vocab_size < vocab_size:
            raise ValueError(f"model.vocab_size = {mcfg.vocab_size} is smaller than the tokenizer's "
                             f"{vocab_size} tokens")
        vocab_size = mcfg.vocab_size
    common = dict(
        vocab_size=vocab_size, hidden_size=mcfg.hidden_size, num_hidden_layers=mcfg.num_layers,
        num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
        head_dim=mcfg.head_dim, intermediate_size=mcfg.intermediate_size,
        moe_intermediate_size=mcfg.moe_intermediate_size, num_experts=mcfg.num_experts,
        num_experts_per_tok=mcfg.experts_per_token, router_aux_loss_coef=mcfg.router_aux_loss_coef,
        max_position_embeddings=mcfg.max_position_embeddings, rope_theta=mcfg.rope_theta,
        tie_word_embeddings=mcfg.tie_word_embeddings, norm_topk_prob=True,
        # With True, generate() on a padded batch crashes in the aux-loss function; the training
        # loops add the aux loss themselves.
        output_router_logits=False,
    )
    if tok is not None:
        common.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None)
    config, cls = family(mcfg.arch).hf_config(mcfg, common)
    config._attn_implementation = mcfg.attn_implementation
    return config, cls


def _set_experts_impl(model, impl: str) -> None:
    if impl and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(impl)
    elif impl:
        model.config._experts_implementation = impl


def load_model(path: str | Path, mcfg=None, dtype: str = "float32") -> PreTrainedModel:
    """Load a checkpoint from a local directory: safetensors only, no remote code."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    if not list(path.glob("*.safetensors")):
        raise ValueError(f"{path} holds no .safetensors weights (pickled weights are refused)")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=False,
        attn_implementation=mcfg.attn_implementation if mcfg else "sdpa")
    if mcfg is not None:
        _set_experts_impl(model, mcfg.experts_implementation)
    model.config.output_router_logits = False
    return model

