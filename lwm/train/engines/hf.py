"""backend=hf: the HF model in plain torch, one process or, under torchrun, wrapped in DDP or
torch FSDP2 (`fully_shard`).

Accelerate's CPU launcher silently runs one process and its FSDP falls back to DDP on CPU, so
the wrapping is done here with plain torch. DDP: full replicas, rank 0 writes checkpoints.
FSDP2: sharded weights and optimizer, every rank writes its shards (lwm.train.checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from lwm.train import checkpoint
from lwm.train import dist as pdist
from lwm.train.engines import Engine, start_checkpoint
from lwm.train.optim import spec, torch_optimizer


def lm_loss(model, ids: torch.Tensor, labels: torch.Tensor, aux: bool = True) -> torch.Tensor:
    """Next-token loss (HF shifts the labels); with `aux`, plus the MoE load-balancing loss
    (router_aux_loss_coef times it), as training adds it."""
    return model(input_ids=ids, labels=labels, output_router_logits=aux, use_cache=False).loss


class HFEngine(Engine):
    name = "hf"

    def __init__(self, cfg, job, paths):
        super().__init__(cfg, job, paths)
        self.dp_rank, self.dp = pdist.init()
        if cfg.backend.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"backend.strategy={cfg.backend.strategy}: the hf engine runs ddp | fsdp")
        self.strategy = cfg.backend.strategy if self.dp > 1 else "none"  # what runs: recorded

    def describe(self) -> str:
        return f"hf {self.strategy} dp {self.dp}"

    def meta(self) -> dict:
        return {"dp_size": self.dp, "strategy": self.strategy}

    def setup(self, resume_from: Path | None) -> None:
        from lwm.models.hf import load_model
        cfg = self.cfg
        if resume_from is None:
            model = load_model(start_checkpoint(cfg, self.job, self.paths), cfg.model, cfg.backend.dtype)
        elif checkpoint.is_sharded(resume_from):
            # weights arrive in restore(), once the model is sharded the way this run shards it
            model = checkpoint.model_skeleton(resume_from, cfg.model, cfg.backend.dtype)
        else:
            model = load_model(resume_from, cfg.model, cfg.backend.dtype)
        self.device = pdist.device()
        model.to(self.device).train()
        self.raw = model                      # unwrapped (FSDP2 shards in place: the same module)
        self.model = wrap(model, self.strategy)
        self.opt = torch_optimizer(self.model, spec(self.job.tcfg))
        if resume_from is not None:
            checkpoint.restore(resume_from, self.opt, model=self.raw)

    def step(self, micro, lr: float) -> tuple[float, float]:
        loss_sum = 0.0
        for ids, labels in micro:
            loss = lm_loss(self.model, ids.to(self.device), labels.to(self.device)) / len(micro)
            loss.backward()
            loss_sum += loss.item()
        grad_norm = clip_grad_norm(self.model, self.job.tcfg.max_grad_norm)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_sum, float(grad_norm)

    @torch.no_grad()
    def eval_loss(self, ids, labels) -> float:
        self.raw.eval()
        loss = lm_loss(self.raw, ids.to(self.device), labels.to(self.device), aux=False).item()
        self.raw.train()
        return loss

    def save(self, path: Path) -> None:
        if self.strategy == "fsdp":
            checkpoint.write_sharded(path, self.raw, self.job.tok, self.opt)
        elif pdist.is_main():
            # DDP keeps full replicas of the optimizer state: rank 0's checkpoint is the job's.
            checkpoint.write_full(path, self.raw, self.job.tok, self.opt)

    def export(self, final: Path, last: Path | None) -> None:
        weights = full_state_dict(self.raw)   # collective under FSDP2; None: raw saves its own weights
        if pdist.is_main():
            self.raw.save_pretrained(final, state_dict=weights, safe_serialization=True)
            self.job.tok.save_pretrained(final)


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
    if not checkpoint.has_dtensors(model):
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
