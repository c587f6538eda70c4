"""Safetensors checkpoints read a tensor at a time and written a shard at a time: converting a
checkpoint holds no more of it than the piece being converted."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


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
