"""GPU benchmark: a short CPT of a small MoE on each backend, side by side (needs CUDA).

    python bench/bench_backends.py [--steps 30] [--seq 1024] [--batch 8]      # one GPU, one process each
    torchrun --nproc-per-node 8 bench/bench_backends.py --backends megatron --ep 8

Every backend trains the same Qwen3-MoE (8 layers, hidden 1024, 32 experts top-4) from the same
init on the same batches (a small repeated synthetic corpus, so the loss must fall),
and prints loss first/last, tokens/s and MFU (6 * active params * tokens/s over the GPU's peak
bf16 dense FLOP/s). Not runnable on CPU: it exits with a message.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def model_cfg():
    from lwm.config import ModelConfig
    return ModelConfig(hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=4, head_dim=64,
                       intermediate_size=2816, moe_intermediate_size=704, num_experts=32, experts_per_token=4,
                       tie_word_embeddings=False, experts_implementation="grouped_mm")


def active_params(m, vocab: int) -> int:
    attn = m.hidden_size * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    experts = 3 * m.hidden_size * m.moe_intermediate_size * m.experts_per_token
    return m.num_layers * (attn + experts + m.hidden_size * m.num_experts) + 2 * vocab * m.hidden_size


def corpus(vocab: int, seq: int, batch: int, steps: int, rank: int, world: int):
    """A small repeated corpus of structured rows: learnable, so the loss falls within steps."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, vocab, (64, seq), generator=g)
    for s in range(steps):
        rows = [(s * batch * world + rank * batch + i) % 64 for i in range(batch)]
        yield base[rows].cuda()


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), 989e12)


def run_hf(args, rank, world):
    from lwm.models.hf import build_model
    from lwm.train.engines.hf import wrap
    torch.manual_seed(0)
    model = wrap(build_model(model_cfg(), args.vocab).to(torch.bfloat16).cuda(), "ddp" if world > 1 else "none")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), fused=True)
    return _loop(args, rank, world, lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss,
                 lambda loss: (loss.backward(), torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
                               opt.step(), opt.zero_grad()))


def run_deepspeed(args, rank, world):
    import deepspeed

    from lwm.config import BackendConfig, CptConfig
    from lwm.models.hf import build_model
    from lwm.train.engines.deepspeed import ds_config
    from lwm.train.optim import spec, torch_optimizer
    b = BackendConfig(name="deepspeed", dtype="bfloat16")
    b.deepspeed.zero_stage = args.zero
    tcfg = CptConfig(batch_size=args.batch, lr=3e-4)
    torch.manual_seed(0)
    model = build_model(model_cfg(), args.vocab)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch_optimizer(model, spec(tcfg)),
                                      config=ds_config(b, tcfg, world))
    return _loop(args, rank, world, lambda ids: engine(input_ids=ids, labels=ids, use_cache=False).loss,
                 lambda loss: (engine.backward(loss), engine.step()))


def run_megatron(args, rank, world):
    from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
    from megatron.core.optimizer import get_megatron_optimizer

    from lwm.config import BackendConfig, CptConfig
    from lwm.models import megatron as mm
    from lwm.train.engines import megatron as mb
    from lwm.train.optim import spec
    b = BackendConfig(name="megatron", dtype="bfloat16")
    b.megatron.expert_parallel = args.ep
    b.megatron.grouped_gemm = _have_te()
    mb.initialize_parallel(b)
    model = mm.build_model(model_cfg(), b, args.vocab, args.seq).cuda()
    model = DistributedDataParallel(config=model.config, ddp_config=mb.ddp_config(b), module=model)
    model.config.finalize_model_grads_func = finalize_model_grads
    opt = get_megatron_optimizer(mb.optimizer_config(b, spec(CptConfig(lr=3e-4))), [model])
    pos = torch.arange(args.seq, device="cuda").unsqueeze(0).expand(args.batch, -1)

    def loss_of(ids):
        tgt = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
        per_token = model(ids, pos, None, labels=tgt)
        return per_token[:, :-1].float().mean()

    def step(loss):
        loss.backward()
        finalize_model_grads([model])  # the DP / expert-DP gradient reductions
        opt.step()
        model.zero_grad_buffer()
        opt.zero_grad()
    return _loop(args, rank, world, loss_of, step)


def _have_te() -> bool:
    try:
        import transformer_engine  # noqa: F401
        return True
    except ImportError:
        return False


def _loop(args, rank, world, loss_of, step):
    losses, tokens = [], 0
    for i, ids in enumerate(corpus(args.vocab, args.seq, args.batch, args.steps, rank, world)):
        if i == args.warmup:
            torch.cuda.synchronize()
            t0, tokens = time.time(), 0
        loss = loss_of(ids)
        step(loss)
        losses.append(loss.item())
        tokens += ids.numel() * world
    torch.cuda.synchronize()
    tps = tokens / (time.time() - t0)
    mfu = 6 * active_params(model_cfg(), args.vocab) * tps / (peak_flops() * world)
    return {"loss_first": losses[0], "loss_last": sum(losses[-3:]) / 3, "loss_fell": losses[-1] < losses[0] - 0.5,
            "tokens_per_s": round(tps), "mfu": round(mfu, 4), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="hf,deepspeed,megatron")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--ep", type=int, default=1)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_backends needs a CUDA GPU (see tests/test_backend_*.py for the CPU checks)")
    from lwm.train import dist as pdist
    rank, world = pdist.init(always=True)
    results = {}
    for name in args.backends.split(","):
        torch.cuda.reset_peak_memory_stats()
        results[name] = {"hf": run_hf, "deepspeed": run_deepspeed, "megatron": run_megatron}[name](args, rank, world)
        torch.cuda.empty_cache()
    if rank == 0:
        print(json.dumps({"device": torch.cuda.get_device_name(), "world": world, **vars(args),
                          "results": results}, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
