"""backend=deepspeed: the one loop on a DeepSpeed engine (ZeRO 0-3, offload). Its JSON config is
generated from ours (`ds_config`), never written by hand, so batch size, accumulation and clipping
stay one knob each; the optimizer is the one every backend builds (lwm.train.optim), handed to
DeepSpeed, which shards it. The TRL stages use `ds_config` too (lwm.train.trl).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lwm.parallel_config import parallel_plan
from lwm.train import dist as pdist
from lwm.train.engines import Engine, start_checkpoint
from lwm.train.engines.hf import lm_loss
from lwm.train.optim import spec, torch_optimizer

log = logging.getLogger("lwm.cpt.deepspeed")

_OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def ds_config(bcfg, tcfg, world_size: int) -> dict:
    """DeepSpeed's config dict for `world_size` ranks. It has no "optimizer" or "scheduler": the
    caller hands DeepSpeed the one optimizer (lwm.train.optim; the HF Trainer builds the same from
    its arguments) and sets the learning rate each step, so changing backend changes the
    parallelism, not the optimisation."""
    d = bcfg.deepspeed
    if d.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"backend.deepspeed.zero_stage = {d.zero_stage}: expected 0, 1, 2 or 3")
    for name in ("offload_optimizer", "offload_param"):
        if getattr(d, name) not in _OFFLOAD_DEVICES:
            raise ValueError(f"backend.deepspeed.{name} = '{getattr(d, name)}': none | cpu | nvme")
    if d.offload_optimizer != "none" and d.zero_stage == 0:
        raise ValueError("backend.deepspeed.offload_optimizer needs zero_stage >= 1")
    if d.offload_param != "none" and d.zero_stage != 3:
        raise ValueError("backend.deepspeed.offload_param needs zero_stage = 3")
    if bcfg.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"backend.dtype = '{bcfg.dtype}': float32 | bfloat16")
    zero: dict = {"stage": d.zero_stage}
    if d.zero_stage >= 1:
        zero.update(overlap_comm=d.overlap_comm, contiguous_gradients=d.contiguous_gradients,
                    reduce_bucket_size=d.reduce_bucket_size)
    if d.zero_stage in (1, 2):
        zero.update(allgather_bucket_size=d.allgather_bucket_size)
    if d.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=d.stage3_prefetch_bucket_size,
                    stage3_param_persistence_threshold=d.stage3_param_persistence_threshold,
                    stage3_gather_16bit_weights_on_model_save=d.stage3_gather_16bit_weights_on_model_save)
    for name in ("offload_optimizer", "offload_param"):
        device = getattr(d, name)
        if device != "none":
            zero[name] = {"device": device, "pin_memory": d.pin_memory}
            if device == "nvme":
                zero[name]["nvme_path"] = d.nvme_path
    cfg = {
        "train_micro_batch_size_per_gpu": tcfg.batch_size,
        "gradient_accumulation_steps": tcfg.grad_accum,
        "train_batch_size": tcfg.batch_size * tcfg.grad_accum * world_size,
        "gradient_clipping": tcfg.max_grad_norm,
        "bf16": {"enabled": bcfg.dtype == "bfloat16"},
        "zero_optimization": zero,
        "steps_per_print": 10 ** 9,  # we log ourselves
        "wall_clock_breakdown": d.wall_clock_breakdown,
    }
    if d.offload_optimizer != "none":
        cfg["zero_force_ds_cpu_optimizer"] = False  # a torch optimizer, stepped on the CPU copy
    if d.activation_checkpointing:
        cfg["activation_checkpointing"] = {"partition_activations": d.zero_stage == 3,
                                           "contiguous_memory_optimization": False}
    return cfg


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    def __init__(self, cfg, job, paths):
        super().__init__(cfg, job, paths)
        import deepspeed
        rank, world = pdist.init(always=True)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.plan = parallel_plan(cfg.model, cfg.backend, world)
        self.dp, self.dp_rank, self.world = self.plan.dp, rank % self.plan.dp, world
        log.info("deepspeed: %s, ZeRO-%d", self.plan.describe(), cfg.backend.deepspeed.zero_stage)

    def describe(self) -> str:
        return f"deepspeed ZeRO-{self.cfg.backend.deepspeed.zero_stage} {self.plan.describe()}"

    def check_resume(self, saved: dict, path: Path) -> None:
        pdist.check_resume_dp(saved, self.dp, f"{path} was written by another data-parallel size: convert it "
                              "with DeepSpeed's ds_to_universal.py and resume with a universal checkpoint")

    def setup(self, resume_from: Path | None) -> None:
        import deepspeed

        from lwm.models.hf import load_model
        cfg, tcfg = self.cfg, self.job.tcfg
        # the job's start even on resume: the checkpoint's module states overwrite the weights
        model = load_model(start_checkpoint(cfg, self.job, self.paths), cfg.model, cfg.backend.dtype)
        if cfg.backend.deepspeed.activation_checkpointing:
            model.gradient_checkpointing_enable()
        opt = torch_optimizer(model, spec(tcfg))  # the one optimizer; DeepSpeed wraps it (ZeRO)
        self.engine, self.opt, _, _ = deepspeed.initialize(
            model=model, optimizer=opt, config=ds_config(cfg.backend, tcfg, self.world))
        if resume_from is not None:
            self.engine.load_checkpoint(str(resume_from.parent), tag=resume_from.name)

    def step(self, micro, lr: float) -> tuple[float, float]:
        for g in self.opt.param_groups:
            g["lr"] = lr
        dev, loss_sum = self.engine.device, 0.0
        for ids, labels in micro:
            loss = lm_loss(self.engine, ids.to(dev), labels.to(dev))
            self.engine.backward(loss)  # DeepSpeed scales by 1/grad_accum itself
            self.engine.step()          # a no-op except at the accumulation boundary
            loss_sum += loss.item() / len(micro)
        return loss_sum, float(self.engine.get_global_grad_norm() or 0.0)

    @torch.no_grad()
    def eval_loss(self, ids, labels) -> float:
        dev = self.engine.device
        self.engine.eval()
        loss = lm_loss(self.engine, ids.to(dev), labels.to(dev), aux=False).item()
        self.engine.train()
        return loss

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path.parent), tag=path.name, save_latest=False)

    def export(self, final: Path, last: Path | None) -> None:
        """The trained model as an HF checkpoint; under ZeRO-3 the shards are gathered first."""
        if self.cfg.backend.deepspeed.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        if pdist.is_main():
            self.engine.module.save_pretrained(final, state_dict=state, safe_serialization=True)
            self.job.tok.save_pretrained(final)
