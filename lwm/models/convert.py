"""HF <-> Megatron state dicts, driving the state-dict adapter of the model's family
(lwm/models/<arch>/adapter.py) a piece at a time.

The converter packages (megatron-bridge, mbridge) need Transformer Engine and CUDA; these
adapters are plain tensor renames that run anywhere and are tested by exact round trip. The
Megatron side is always named as the Transformer Engine spec names it (what `backend=megatron`
builds on GPUs; tests/test_megatron_names.py), experts as SequentialMLP's `local_experts.K.` or
TE's grouped `linear_fc1.weightK`; lwm.models.megatron_names maps these names onto a model built
from Megatron's torch-only layers.

Multi-token-prediction weights ('mtp.' in HF checkpoints) are not converted: the Megatron model
is built without MTP layers. A checkpoint holding them is refused unless `drop_mtp` (--drop-mtp)
says to leave them out, which the output then records.

    python -m lwm.models.convert hf2mcore SRC_HF_DIR DST.safetensors [--expert-layout sequential|te_grouped]
                                          [--drop-mtp]
    python -m lwm.models.convert mcore2hf SRC.safetensors HF_CONFIG_DIR DST_HF_DIR
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from lwm.models import family, family_for_hf
from lwm.models.safetensors_io import SafetensorsDir


def layout_for_model(mcfg):
    """The adapter layout for our model config (model.arch picks the family)."""
    return family(mcfg.arch).layout(mcfg)


def layout_for_hf(config):
    """The adapter layout for an HF config (its model_type picks the family)."""
    return family_for_hf(config.model_type).layout_from_hf(config)


MTP_KEY = re.compile(r"(model\.(language_model\.)?)?mtp\.")


def mtp_keys(sd) -> list[str]:
    """The multi-token-prediction tensors of an HF state dict (released Qwen3.5 and Qwen3-Next
    checkpoints hold them under 'mtp.')."""
    return sorted(k for k in sd if MTP_KEY.match(k))


def check_mtp(sd, drop_mtp: bool) -> list[str]:
    """The MTP tensors that will be left out; refused, naming the first, unless drop_mtp."""
    mtp = mtp_keys(sd)
    if mtp and not drop_mtp:
        raise ValueError(
            f"the HF checkpoint holds {len(mtp)} multi-token-prediction tensors (first: '{mtp[0]}'), which "
            "are not converted: the Megatron model is built without MTP layers. To leave them out "
            "knowingly, convert with --drop-mtp (python -m lwm.models.convert hf2mcore ... --drop-mtp, or "
            "python -m lwm.models.megatron_ckpt import CONFIG SRC <stage>/checkpoints/init --drop-mtp "
            "before the run, which then starts from it); the output records what was dropped")
    return mtp


def iter_hf_to_megatron(sd, L, expert_layout: str = "sequential", drop_mtp: bool = False) -> Iterator[dict]:
    """HF -> Megatron in pieces: embedding, final norm and output layer first, then one decoder
    layer at a time (each checked for all its experts). With a lazily loaded `sd` (SafetensorsDir)
    only the tensors of the piece being converted are read. MTP tensors: see check_mtp."""
    check_mtp(sd, drop_mtp)
    adapter = family(L.arch).adapter()
    sd = adapter.hf_view(sd)
    yield adapter.ends_to_megatron(sd, L)
    for i in range(L.num_layers):
        piece = adapter.layer_to_megatron(sd, L, i, expert_layout)
        check_expert_count(piece, L, f"megatron layer {i}", layers=1)
        yield piece


def iter_megatron_to_hf(sd, L, expert_layout: str = "sequential", per_expert: bool = False) -> Iterator[dict]:
    """Megatron -> HF in the same pieces; sd must hold every expert (checked first)."""
    sd = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    check_expert_count(sd, L, "megatron")
    adapter = family(L.arch).adapter()
    yield adapter.ends_to_hf(sd, L)
    for i in range(L.num_layers):
        yield adapter.layer_to_hf(sd, L, i, expert_layout, per_expert)


def hf_to_megatron(sd, L, expert_layout: str = "sequential", drop_mtp: bool = False) -> dict:
    """Full HF tensors -> full Megatron tensors (names of the Transformer Engine layer spec)."""
    return {k: v for piece in iter_hf_to_megatron(sd, L, expert_layout, drop_mtp) for k, v in piece.items()}


def megatron_to_hf(sd, L, expert_layout: str = "sequential", per_expert: bool = False) -> dict:
    return {k: v for piece in iter_megatron_to_hf(sd, L, expert_layout, per_expert) for k, v in piece.items()}


def expert_tensor_count(sd: dict) -> int:
    """Expert weight tensors in a Megatron or per-expert HF state dict (fused HF counts E per tensor)."""
    n = 0
    for k, v in sd.items():
        if re.search(r"local_experts\.\d+\.linear_fc[12]\.weight$|linear_fc[12]\.weight\d+$"
                     r"|experts\.\d+\.(gate|up|down)_proj\.weight$", k):
            n += 1
        elif k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            n += v.shape[0]
    return n


def check_expert_count(sd, L, side: str, layers: int | None = None) -> None:
    """Every expert of `layers` layers (default: all) is in sd, as Megatron's fc1/fc2 pairs."""
    layers = L.num_layers if layers is None else layers
    want = 2 * L.num_experts * layers
    got = expert_tensor_count(sd)
    if got != want:
        raise ValueError(f"{side} state dict holds {got} expert tensors, expected {want} "
                         f"({layers} layers x {L.num_experts} experts x fc1/fc2)")


def _layout(config_dir: Path):
    from transformers import AutoConfig
    return layout_for_hf(AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lwm.models.convert")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf2mcore")
    a.add_argument("src", type=Path)
    a.add_argument("dst", type=Path)
    a.add_argument("--expert-layout", default="sequential")
    a.add_argument("--drop-mtp", action="store_true",
                   help="leave out multi-token-prediction weights (recorded in the output's metadata)")
    b = sub.add_parser("mcore2hf")
    b.add_argument("src", type=Path)
    b.add_argument("config_dir", type=Path)
    b.add_argument("dst", type=Path)
    b.add_argument("--expert-layout", default="sequential")
    args = ap.parse_args(argv)
    from safetensors.torch import save_file
    if args.cmd == "hf2mcore":
        L, src = _layout(args.src), SafetensorsDir(args.src)
        dropped = check_mtp(src, args.drop_mtp)
        sd = hf_to_megatron(src, L, args.expert_layout, drop_mtp=args.drop_mtp)
        meta = {"format": "pt", "expert_layout": args.expert_layout}
        if dropped:
            meta["dropped_mtp"] = f"{len(dropped)} multi-token-prediction tensors, not converted (--drop-mtp)"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(args.dst), metadata=meta)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM
        L = _layout(args.config_dir)
        sd = megatron_to_hf(SafetensorsDir(args.src), L, args.expert_layout)
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
