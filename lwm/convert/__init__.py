"""HF <-> Megatron checkpoint conversion, one state-dict adapter per model family
(qwen3_moe: Qwen3-MoE; qwen3_5_moe: Qwen3.5-MoE, Gated DeltaNet + gated attention).

The converter packages (megatron-bridge, mbridge) need Transformer Engine and CUDA; these
adapters are plain tensor renames that run anywhere and are tested by exact round trip.

    python -m lwm.convert hf2mcore SRC_HF_DIR DST.safetensors [--expert-layout sequential|te_grouped]
    python -m lwm.convert mcore2hf SRC.safetensors HF_CONFIG_DIR DST_HF_DIR
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from lwm.convert import qwen3_5_moe, qwen3_moe
from lwm.convert.qwen3_5_moe import Qwen35MoeLayout
from lwm.convert.qwen3_moe import Qwen3MoeLayout, check_expert_count, expert_tensor_count

__all__ = [
    "Qwen3MoeLayout",
    "Qwen35MoeLayout",
    "SafetensorsDir",
    "ShardedSafetensorsWriter",
    "expert_tensor_count",
    "hf_to_megatron",
    "iter_hf_to_megatron",
    "iter_megatron_to_hf",
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


def iter_hf_to_megatron(sd, L, expert_layout: str = "sequential") -> Iterator[dict]:
    """HF -> Megatron in pieces: embedding, final norm and output layer first, then one decoder
    layer at a time (each checked for all its experts). With a lazily loaded `sd` (SafetensorsDir)
    only the tensors of the piece being converted are read."""
    adapter = _ADAPTERS[type(L)]
    sd = adapter.hf_view(sd)
    yield qwen3_moe.ends_to_megatron(sd, L)
    for i in range(L.num_layers):
        piece = adapter.layer_to_megatron(sd, L, i, expert_layout)
        check_expert_count(piece, L, f"megatron layer {i}", layers=1)
        yield piece


def iter_megatron_to_hf(sd, L, expert_layout: str = "sequential", per_expert: bool = False) -> Iterator[dict]:
    """Megatron -> HF in the same pieces; sd must hold every expert (checked first)."""
    sd = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    check_expert_count(sd, L, "megatron")
    yield qwen3_moe.ends_to_hf(sd, L)
    for i in range(L.num_layers):
        yield _ADAPTERS[type(L)].layer_to_hf(sd, L, i, expert_layout, per_expert)


def hf_to_megatron(sd, L, expert_layout: str = "sequential") -> dict:
    """Full HF tensors -> full Megatron tensors (names of the torch-only layer spec)."""
    return {k: v for piece in iter_hf_to_megatron(sd, L, expert_layout) for k, v in piece.items()}


def megatron_to_hf(sd, L, expert_layout: str = "sequential", per_expert: bool = False) -> dict:
    return {k: v for piece in iter_megatron_to_hf(sd, L, expert_layout, per_expert) for k, v in piece.items()}


class SafetensorsDir(Mapping):
    """The tensors of a safetensors checkpoint (a file, or a directory of shards), read one at a
    time when looked up and cast to `dtype` if given: converting a checkpoint never holds more
    of it in memory than the piece being converted."""

    def __init__(self, path: Path, dtype: torch.dtype | None = None):
        from safetensors import safe_open
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no .safetensors weights")
        self._files = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: f for f in self._files for k in f.keys()}
        self.dtype = dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        t = self._where[key].get_tensor(key)
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


class ShardedSafetensorsWriter:
    """Writes a state dict handed over in pieces as HF-style safetensors shards of at most
    `max_shard_bytes` (one piece may exceed it), with `model.safetensors.index.json` when there
    is more than one; a single shard is `model.safetensors`. Only the open shard is held."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None):
        self.out_dir, self.max_shard_bytes, self.dtype = Path(out_dir), max_shard_bytes, dtype
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._open: dict = {}
        self._written: list[list[str]] = []
        self._bytes = self.total_bytes = 0

    def add(self, tensors: dict) -> None:
        for k, t in tensors.items():
            if self.dtype is not None and t.is_floating_point():
                t = t.to(self.dtype)
            t = t.contiguous()
            if t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()  # a slice of a larger tensor (fused gate/up, qkv): stored on its own
            self._open[k] = t
            self._bytes += t.numel() * t.element_size()
        if self._bytes >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file
        if not self._open:
            return
        save_file(self._open, str(self.out_dir / f"shard-{len(self._written):05d}.safetensors"),
                  metadata={"format": "pt"})
        self._written.append(list(self._open))
        self.total_bytes += self._bytes
        self._open, self._bytes = {}, 0

    def close(self) -> list[Path]:
        import json
        self._flush()
        n = len(self._written)
        if n == 1:
            (self.out_dir / "shard-00000.safetensors").rename(self.out_dir / "model.safetensors")
            return [self.out_dir / "model.safetensors"]
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            (self.out_dir / f"shard-{i:05d}.safetensors").rename(self.out_dir / name)
        weight_map = {k: names[i] for i, keys in enumerate(self._written) for k in keys}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2))
        return [self.out_dir / name for name in names]


def _layout(config_dir: Path):
    from transformers import AutoConfig
    return layout_for_hf(AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False))


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
        sd = hf_to_megatron(SafetensorsDir(args.src), L, args.expert_layout)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(args.dst))
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
