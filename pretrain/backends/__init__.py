"""Training backends for the CPT stage, chosen by `backend.name`.

hf: the plain torch loop in pretrain/train.py (one process, or DDP / torch FSDP2 under torchrun);
deepspeed: the same loop on a DeepSpeed engine (ZeRO 0-3, offload); megatron: megatron-core
GPTModel with tensor/pipeline/context/expert parallelism. Each module turns our typed config
into its framework's own, so the same `cpt.*` and `model.*` fields drive all three.
"""

from __future__ import annotations


def train_fn(name: str):
    """The CPT driver of a backend: (cfg, paths) -> metrics dict."""
    if name == "hf":
        from pretrain.train import train
        return train
    if name == "deepspeed":
        from pretrain.backends.deepspeed import train
        return train
    if name == "megatron":
        from pretrain.backends.megatron_train import train
        return train
    raise ValueError(f"backend.name = '{name}': expected hf, deepspeed or megatron")
