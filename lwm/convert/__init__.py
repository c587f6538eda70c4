"""HF <-> Megatron checkpoint conversion, one state-dict adapter per model family.

The converter packages (megatron-bridge, mbridge) need Transformer Engine and CUDA; these
adapters are plain tensor renames that run anywhere and are tested by exact round trip.

    python -m lwm.convert hf2mcore SRC_HF_DIR DST.safetensors [--expert-layout sequential|te_grouped]
    python -m lwm.convert mcore2hf SRC.safetensors HF_CONFIG_DIR DST_HF_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lwm.convert.qwen3_moe import Qwen3MoeLayout, expert_tensor_count, hf_to_megatron, megatron_to_hf

__all__ = ["Qwen3MoeLayout", "expert_tensor_count", "hf_to_megatron", "megatron_to_hf", "main"]


def _layout(config_dir: Path) -> Qwen3MoeLayout:
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False)
    if c.model_type != "qwen3_moe":
        raise NotImplementedError(f"{config_dir}: model_type '{c.model_type}' has no state-dict adapter "
                                  "(qwen3_moe only)")
    return Qwen3MoeLayout.from_hf_config(c)


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
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(args.config_dir)))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise ValueError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(args.dst, safe_serialization=True)
    print(f"{args.cmd}: {expert_tensor_count(sd)} expert tensors -> {args.dst}")


if __name__ == "__main__":
    main()
