"""HF <-> Megatron checkpoint conversion, one state-dict adapter per model family
(qwen3_moe: Qwen3-MoE; qwen3_5_moe: Qwen3.5-MoE, Gated DeltaNet + gated attention).

The converter packages (megatron-bridge, mbridge) need Transformer Engine and CUDA; these
adapters are plain tensor renames that run anywhere and are tested by exact round trip.

    python -m lwm.convert hf2mcore SRC_HF_DIR DST.safetensors [--expert-layout sequential|te_grouped]
    python -m lwm.convert mcore2hf SRC.safetensors HF_CONFIG_DIR DST_HF_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lwm.convert import qwen3_5_moe, qwen3_moe
from lwm.convert.qwen3_5_moe import Qwen35MoeLayout
from lwm.convert.qwen3_moe import Qwen3MoeLayout, expert_tensor_count

__all__ = [
    "Qwen3MoeLayout",
    "Qwen35MoeLayout",
    "expert_tensor_count",
    "hf_to_megatron",
    "layout_for_hf",
    "layout_for_model",
    "main",
    "megatron_to_hf",
]

_ADAPTERS = {Qwen3MoeLayout: qwen3_moe, Qwen35MoeLayout: qwen3_5_moe}
_BY_ARCH = {"qwen3_moe": Qwen3MoeLayout, "qwen3_5_moe": Qwen35MoeLayout}
# HF model_type -> our arch ('qwen3_5_moe' is the released vision-language checkpoint, whose
# text model the adapter reads)
_BY_HF_TYPE = {"qwen3_moe": "qwen3_moe", "qwen3_5_moe": "qwen3_5_moe", "qwen3_5_moe_text": "qwen3_5_moe"}


def layout_for_model(mcfg):
    """The adapter layout for our model config (model.arch picks the family)."""
    if mcfg.arch not in _BY_ARCH:
        raise NotImplementedError(f"model.arch = '{mcfg.arch}' has no HF <-> Megatron adapter "
                                  f"({', '.join(_BY_ARCH)})")
    return _BY_ARCH[mcfg.arch].from_model_config(mcfg)


def layout_for_hf(config):
    """The adapter layout for an HF config (its model_type picks the family)."""
    if config.model_type not in _BY_HF_TYPE:
        raise NotImplementedError(f"model_type '{config.model_type}' has no state-dict adapter "
                                  f"({', '.join(_BY_HF_TYPE)})")
    return _BY_ARCH[_BY_HF_TYPE[config.model_type]].from_hf_config(config)


def hf_to_megatron(sd: dict, L, expert_layout: str = "sequential") -> dict:
    """Full HF tensors -> full Megatron tensors (names of the torch-only layer spec)."""
    return _ADAPTERS[type(L)].hf_to_megatron(sd, L, expert_layout)


def megatron_to_hf(sd: dict, L, expert_layout: str = "sequential", per_expert: bool = False) -> dict:
    return _ADAPTERS[type(L)].megatron_to_hf(sd, L, expert_layout, per_expert)


def _layout(config_dir: Path):
    from transformers import AutoConfig
    return layout_for_hf(AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False))


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no .safetensors weights")
    sd = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lwm.convert")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf2mcore")
    a.add_argument("src", type=Path)
    a.add_argument("dst", type=Path)
    a.add_argument("--expert-layout", default="sequential")
    b = sub.add_parser("mcore2hf")
    b.add_argument("src", type=Path)
    b.add_argument("config_dir", type=Path)
    b.add_argument("dst", type=Path)
    b.add_argument("--expert-layout", default="sequential")
    args = ap.parse_args(argv)
    from safetensors.torch import save_file
    if args.cmd == "hf2mcore":
        L = _layout(args.src)
        sd = hf_to_megatron(_read_safetensors(args.src), L, args.expert_layout)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(args.dst))
    else:
        from transformers import AutoConfig, AutoModelForCausalLM
        L = _layout(args.config_dir)
        sd = megatron_to_hf(_read_safetensors(args.src), L, args.expert_layout)
        config = AutoConfig.from_pretrained(str(args.config_dir), trust_remote_code=False)
        # a vision-language config (released Qwen3.5) writes its text model: Qwen3_5MoeForCausalLM
        model = AutoModelForCausalLM.from_config(getattr(config, "text_config", None) or config)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise ValueError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(args.dst, safe_serialization=True)
    print(f"{args.cmd}: {expert_tensor_count(sd)} expert tensors -> {args.dst}")


if __name__ == "__main__":
    main()
