"""backend=hf under torchrun: the same model wrapped in DDP or torch FSDP2 (`fully_shard`).

Accelerate's CPU launcher silently runs one process and its FSDP falls back to DDP on CPU, so
the wrapping is done here with plain torch and the world size is asserted by the caller.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def wrap(model: torch.nn.Module, strategy: str) -> torch.nn.Module:
    """`model` ready for data-parallel training; a no-op without a process group."""
    if strategy == "none" or not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        # one unit per decoder layer, then the root (embeddings, norm, head)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"backend.strategy = '{strategy}': ddp | fsdp")


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Gradient clipping that also works on FSDP2's DTensor gradients (the norm is global)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state_dict(model: torch.nn.Module) -> dict | None:
    """Collective under FSDP2: the full weights, gathered to rank 0's CPU (other ranks get {});
    None when the parameters are not sharded, so the module saves itself as it is."""
    from lwm.checkpoint import has_dtensors
    if not has_dtensors(model):
        return None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Gathering copies tied weights (embeddings / lm_head) apart; sharing storage again lets
    # save_pretrained drop the tied copy exactly as it does for an unsharded model.
    first = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in full:
            full[name] = full[first.setdefault(param, name)]
    return full
