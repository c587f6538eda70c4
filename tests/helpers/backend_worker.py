"""Run by torchrun from tests/test_backend_dist.py (gloo, CPU): `python tests/helpers/backend_worker.py MODE OUT.json`.

Every mode trains the tiny MoE (or a DeepSpeed-MoE toy) for a few steps on fixed batches and
rank 0 writes the per-step global mean loss, so the test compares it with a one-process run.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

STEPS, BATCH, SEQ, VOCAB = 3, 2, 16, 128


def tiny_model():
    from lwm.config import ModelConfig
    from lwm.models.hf import build_model
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                                   intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                   experts_implementation="eager"), VOCAB)


def batches(rank: int, world: int):
    """The same global batch whatever the world size: rank r takes rows r::world."""
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (BATCH * 2, SEQ), generator=g)
        yield ids[rank::world]


def mean_over_ranks(x: float) -> float:
    if not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def run_hf(strategy: str, rank: int, world: int) -> list[float]:
    from lwm.train.engines.hf import clip_grad_norm, wrap
    model = wrap(tiny_model(), strategy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)  # as ds_config
    losses = []
    for ids in batches(rank, world):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(mean_over_ranks(loss.item()))
    return losses


def run_ds_zero(stage: int, rank: int, world: int) -> list[float]:
    import deepspeed

    from lwm.config import BackendConfig, CptConfig
    from lwm.train.engines.deepspeed import ds_config
    from lwm.train.optim import spec, torch_optimizer
    b = BackendConfig(name="deepspeed")
    b.deepspeed.zero_stage = stage
    tcfg = CptConfig(batch_size=BATCH * 2 // world, grad_accum=1, lr=1e-2, max_grad_norm=1.0, warmup_steps=0)
    model = tiny_model()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch_optimizer(model, spec(tcfg)),
                                      config=ds_config(b, tcfg, world))
    losses = []
    for ids in batches(rank, world):
        loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        losses.append(mean_over_ranks(loss.item()))
    return losses


class MoeToy(torch.nn.Module):
    """Embedding -> DeepSpeed-MoE layer (4 experts, top-2) -> head."""

    def __init__(self, ep_size: int):
        super().__init__()
        from deepspeed.moe.layer import MoE
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 32)
        expert = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
        self.moe = MoE(hidden_size=32, expert=expert, num_experts=4, ep_size=ep_size, k=2,
                       capacity_factor=4.0, eval_capacity_factor=4.0, min_capacity=64, drop_tokens=False)
        self.head = torch.nn.Linear(32, VOCAB)

    def forward(self, ids):
        h, aux, _ = self.moe(self.emb(ids))
        logits = self.head(h)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids.reshape(-1)) + 0.01 * aux


def run_ds_moe(ep_size: int, rank: int, world: int) -> list[float]:
    import deepspeed
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
    model = MoeToy(ep_size)
    if ep_size > 1:
        # the non-EP model's experts, as this rank's slice of them: the same network either way
        full = MoeToy(1).moe.deepspeed_moe.experts.deepspeed_experts
        local = model.moe.deepspeed_moe.experts.deepspeed_experts
        per = len(full) // ep_size
        for i, expert in enumerate(local):
            expert.load_state_dict(full[rank % ep_size * per + i].state_dict())
    groups = split_params_into_different_moe_groups_for_optimizer(
        {"params": list(model.parameters()), "name": "all"})
    opt = torch.optim.AdamW(groups, lr=1e-2)
    config = {"train_micro_batch_size_per_gpu": BATCH * 2 // world, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 0}, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    losses = []
    for ids in batches(rank, world):
        loss = engine(ids)
        engine.backward(loss)
        engine.step()
        losses.append(mean_over_ranks(loss.item()))
    return losses


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    if mode.startswith("ds"):
        import importlib
        import deepspeed
        # The shared-memory allreduce op is a CPU speed-up that JIT-compiles for ~60 s: not needed
        # here. (sys.modules, since `deepspeed.comm.torch` as an attribute is the torch package.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        if world == 1 and "RANK" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(29600 + os.getpid() % 300))
        deepspeed.init_distributed(dist_backend="gloo")
    elif world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    assert (dist.get_world_size() if dist.is_initialized() else 1) == world
    kind, _, arg = mode.partition(":")
    runs = {"hf": lambda: run_hf(arg, rank, world), "ds_zero": lambda: run_ds_zero(int(arg), rank, world),
            "ds_moe": lambda: run_ds_moe(int(arg), rank, world)}
    losses = runs[kind]()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"world": world, "losses": losses}, f)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    # DeepSpeed's background threads sometimes abort in interpreter teardown ("terminate called
    # without an active exception") after all work is done and written: skip the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
