"""backend=megatron: megatron-core's GPTModel, DDP, optimizer (distributed or not), pipeline
schedule and dist_checkpointing, as an engine of the one loop (lwm.train.loop).

The job's HF start is imported into a dist checkpoint (in a one-rank child process,
lwm.models.megatron_ckpt), checkpoints hold weights and optimizer (resumable on another
data-parallel size), and the last one is exported back to HF for the later stages. Rows are
whatever the stage hands the loop: packed CPT rows, or SFT samples one per row, right-padded.

Runs on GPUs; the tests run it on CPU over gloo with Megatron's CUDA-only spots patched
(lwm/models/megatron_cpu.py, enabled for training by tests/helpers/megatron_site, sets CPU_ENV).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import torch

from lwm.parallel_config import parallel_plan, world_size_of
from lwm.train import dist as pdist
from lwm.train.engines import Engine, start_checkpoint
from lwm.train.optim import OptimSpec, spec

log = logging.getLogger("lwm.megatron")

CPU_ENV = "LWM_MEGATRON_ON_CPU"  # tests only: set by lwm.models.megatron_cpu.enable(training=True)
# dp_reshardable: the distributed optimizer's shards re-split over another DP size on load
OPT_META = {"distrib_optim_sharding_type": "dp_reshardable"}


def check_resume_layout(saved: dict, now: dict, where) -> None:
    """Megatron checkpoints reshard across data-parallel sizes (model weights by key, the
    distributed optimizer's 'dp_reshardable' state by DP); a change of TP/PP/CP/EP/ETP or of the
    optimizer kind is refused by name instead of being loaded into the wrong slots."""
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if k != "dp_size" and saved.get(k) != v]
    if changed:
        raise RuntimeError(f"resume from {where}: the checkpoint's optimizer state was written with another "
                           f"layout ({', '.join(changed)}); resume with the old layout, or start from its "
                           "weights only: export it to HF (python -m lwm.models.megatron_ckpt export ...) "
                           "and pass <stage>.init=<that dir> with <stage>.resume=never")


def _prime_adam_state(opt) -> None:
    """Without Apex/TE Megatron runs torch's Adam, which keeps `step` per parameter and creates
    its state on the first step; the optimizer's sharded_state_dict reads that state, so before
    loading into a fresh optimizer it gets zero moments and step 0 (the load overwrites them)."""
    for sub in getattr(opt, "chained_optimizers", [opt]):
        inner = sub.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p].update(exp_avg=torch.zeros_like(p.data), exp_avg_sq=torch.zeros_like(p.data),
                                          step=torch.tensor(0.0))


def _restore_adam_step(opt) -> None:
    """The checkpoint keeps Adam's step count in the param groups (where TE's FusedAdam keeps
    it); torch's Adam reads it per parameter, and the per-parameter copy the load leaves behind
    is the zero from `_prime_adam_state`. Without this, bias correction restarts after a resume."""
    for sub in getattr(opt, "chained_optimizers", [opt]):
        inner = sub.optimizer
        for group in inner.param_groups:
            if "step" in group:
                for p in group["params"]:
                    if "step" in inner.state[p]:
                        inner.state[p]["step"] = torch.tensor(float(group["step"]))


def ddp_config(bcfg):
    from megatron.core.distributed import DistributedDataParallelConfig
    m = bcfg.megatron
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=m.distributed_optimizer,
        overlap_grad_reduce=m.overlap_grad_reduce,
        overlap_param_gather=m.overlap_param_gather and m.distributed_optimizer)


def optimizer_config(bcfg, s: OptimSpec):
    """The one optimizer (lwm.train.optim) as Megatron's: the loop sets the rate of every param
    group before each step, so min_lr only documents the floor."""
    from megatron.core.optimizer import OptimizerConfig
    return OptimizerConfig(optimizer="adam", lr=s.lr, min_lr=s.lr * s.min_lr_ratio, weight_decay=s.weight_decay,
                           adam_beta1=s.betas[0], adam_beta2=s.betas[1], adam_eps=s.eps, clip_grad=s.max_grad_norm,
                           bf16=bcfg.dtype == "bfloat16",
                           use_distributed_optimizer=bcfg.megatron.distributed_optimizer)


def initialize_parallel(bcfg, seed: int = 1234) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    m = bcfg.megatron
    ps.initialize_model_parallel(
        tensor_model_parallel_size=m.tensor_parallel, pipeline_model_parallel_size=m.pipeline_parallel,
        context_parallel_size=m.context_parallel, expert_model_parallel_size=m.expert_parallel,
        expert_tensor_parallel_size=m.expert_tensor_parallel)
    # per-TP-rank RNG streams (dropout, init); the tensor-parallel layers need them registered
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _layout_meta(plan, bcfg) -> dict:
    m = bcfg.megatron
    return {"tp": m.tensor_parallel, "pp": m.pipeline_parallel, "cp": m.context_parallel,
            "ep": m.expert_parallel, "etp": m.expert_tensor_parallel, "dp_size": plan.dp,
            "distributed_optimizer": m.distributed_optimizer}


class MegatronEngine(Engine):
    name = "megatron"

    def __init__(self, cfg, job, paths):
        super().__init__(cfg, job, paths)
        from megatron.core import parallel_state as ps
        if not torch.cuda.is_available() and not os.environ.get(CPU_ENV):
            raise RuntimeError("backend=megatron trains on GPUs (the tests patch Megatron to run "
                               "its model and optimizer on CPU for the tests)")
        rank, world = pdist.init(always=True)
        self.plan = parallel_plan(cfg.model, cfg.backend, world)
        if cfg.cluster.name != "local" and world != world_size_of(cfg.cluster):
            log.warning("megatron: %d ranks running, cluster %s describes %d", world, cfg.cluster.name,
                        world_size_of(cfg.cluster))
        initialize_parallel(cfg.backend, cfg.seed)
        self.dp, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        self.rank = rank

    def describe(self) -> str:
        return self.plan.describe()

    def meta(self) -> dict:
        return _layout_meta(self.plan, self.cfg.backend)

    def check_resume(self, saved: dict, path: Path) -> None:
        check_resume_layout(saved, self.meta(), path)

    def setup(self, resume_from: Path | None) -> None:
        from megatron.core import dist_checkpointing
        from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
        from megatron.core.optimizer import get_megatron_optimizer

        from lwm.models.megatron import build_model
        from lwm.models.megatron_ckpt import run_in_own_process
        cfg, job = self.cfg, self.job
        self.dev = pdist.device()
        self.vocab = cfg.model.vocab_size or len(job.tok)
        model = build_model(cfg.model, cfg.backend, self.vocab, job.seq_len).to(self.dev)
        self.model = DistributedDataParallel(config=model.config, ddp_config=ddp_config(cfg.backend), module=model)
        self.opt = get_megatron_optimizer(optimizer_config(cfg.backend, spec(job.tcfg)), [self.model])
        self.model.config.finalize_model_grads_func = finalize_model_grads
        if resume_from is not None:
            _prime_adam_state(self.opt)
            msd = self.model.module.sharded_state_dict()
            state = dist_checkpointing.load(
                {"model": msd, "optimizer": self.opt.sharded_state_dict(msd, is_loading=True, metadata=OPT_META)},
                str(resume_from))
            self.model.module.load_state_dict(state["model"])
            with torch.no_grad():  # in fp32 the main params are views of the weights, which autograd guards
                self.opt.load_state_dict(state["optimizer"])
            _restore_adam_step(self.opt)
        else:
            start = self.paths.stage(job.stage) / "checkpoints" / "init"
            init = start_checkpoint(cfg, job, self.paths)
            if self.rank == 0 and not start.exists():
                run_in_own_process("import", cfg, init, start)
            pdist.barrier()
            state = dist_checkpointing.load({"model": self.model.module.sharded_state_dict()}, str(start))
            self.model.module.load_state_dict(state["model"])
            self.opt.reload_model_params()  # the optimizer's main (fp32) copies follow the loaded weights
        self._schedule()

    def _schedule(self) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.utils import get_batch_on_this_cp_rank
        self.fwd_bwd = get_forward_backward_func()
        # The CP group is always passed: from megatron-core 0.18 a missing group means the whole
        # world, which would split sequences over the data-parallel ranks too. 0.18 also added a
        # required is_hybrid_cp flag.
        cp_kw = {"cp_group": ps.get_context_parallel_group()}
        if "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters:
            cp_kw["is_hybrid_cp"] = False
        dev = self.dev

        def forward_step(data_iter, model):
            ids, labels = next(data_iter)
            ids, labels = ids.to(dev), labels.to(dev)
            pos = torch.arange(ids.shape[1], device=dev).unsqueeze(0).expand_as(ids)
            # next-token targets, as HF's shift inside its loss
            tgt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            # with context parallelism each rank keeps its (load-balanced) chunks of the sequence
            b = get_batch_on_this_cp_rank({"tokens": ids, "labels": tgt, "position_ids": pos}, **cp_kw)
            keep = (b["labels"] != -100).float()
            out = model(b["tokens"], b["position_ids"], None, labels=b["labels"].clamp(min=0))

            def loss_fn(per_token):
                loss = (per_token.float() * keep).sum() / keep.sum().clamp(min=1)
                # a copy: the schedule divides the returned loss in place by the micro-batch count
                return loss, {"lm": loss.detach().clone()}
            return out, loss_fn
        self.forward_step = forward_step

    def _mean_loss(self, reports, n: int) -> float:
        """Only the last pipeline stage has the losses: mean over micro-batches and DP replicas,
        handed to every stage."""
        from megatron.core import parallel_state as ps
        last = ps.is_pipeline_last_stage()
        # on the engine's device: an NCCL process group (torchrun on GPUs) refuses CPU tensors
        loss = torch.tensor([sum(float(r["lm"]) for r in reports) / n if last else 0.0], device=self.dev)
        torch.distributed.all_reduce(loss, group=ps.get_data_parallel_group())
        torch.distributed.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())
        return loss.item() / self.dp

    def _run(self, micro, forward_only: bool):
        return self.fwd_bwd(forward_step_func=self.forward_step, data_iterator=iter(micro), model=[self.model],
                            num_microbatches=len(micro), seq_length=micro[0][0].shape[1],
                            micro_batch_size=micro[0][0].shape[0], forward_only=forward_only)

    def step(self, micro, lr: float) -> tuple[float, float]:
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.zero_grad_buffer()
        self.opt.zero_grad()
        reports = self._run(micro, forward_only=False)
        _, grad_norm, _ = self.opt.step()
        return self._mean_loss(reports, len(micro)), float(grad_norm or 0.0)

    @torch.no_grad()
    def eval_loss(self, ids, labels) -> float:
        self.model.eval()
        reports = self._run([(ids, labels)], forward_only=True)
        self.model.train()
        return self._mean_loss(reports, 1)

    def save(self, path: Path) -> None:
        from megatron.core import dist_checkpointing
        # With overlap_param_gather the distributed optimizer's last update reaches the weights
        # only in the next forward's pre-hooks: gather it now, or the checkpoint is a step stale.
        hooked = getattr(self.model, "use_forward_hook", False)
        if hooked:
            self.model.disable_forward_pre_hook(param_sync=True)
        msd = self.model.module.sharded_state_dict()
        dist_checkpointing.save({"model": msd, "optimizer": self.opt.sharded_state_dict(msd, metadata=OPT_META)},
                                str(path))
        if hooked:
            self.model.enable_forward_pre_hook()

    def export(self, final: Path, last: Path | None) -> None:
        """The HF checkpoint the later stages read, gathered from the last dist checkpoint."""
        from lwm.models.megatron_ckpt import run_in_own_process
        if self.rank == 0:
            run_in_own_process("export", self.cfg, last, final, tokenizer=self.job.tok.name_or_path)
        pdist.barrier()
