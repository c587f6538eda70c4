"""Tokens/s and MFU of each training engine on one Qwen3-style MoE built from config.

    python bench/bench_backends.py [--backends hf,deepspeed,megatron] [--steps 8] [--seq 4096] [--batch 2]
    torchrun --nproc-per-node 8 bench/bench_backends.py --backends megatron --set backend.megatron.expert_parallel=8

Each engine (lwm.train.engines) is built as the one loop builds it, from one composed config, and
its `step` (the loop's hot path: forward, backward, clipping, optimizer step) is timed on
synthetic rows after a few warm-up steps. Only the start weights differ from a real run: they
are drawn from config on the device (`weights_from_config`) instead of read from a saved HF
checkpoint, which at billions of parameters costs a minute of disk I/O per engine and nothing
in a step. bench/gpu_check.py runs `measure` on one GPU as its throughput rows.

MFU = tokens/s x FLOP per token / (peak x GPUs), FLOP per token = 6 x active parameters (attention
projections, the k routed experts, router, output head; embeddings are a lookup) + 6 x layers x
heads x head_dim x seq (causal attention, forward and backward: half of PaLM's 12 L H Q T).
The peak is the H200's bf16 dense matrix rate measured on this workplace's machines, 790 TFLOP/s
(8192^3 products; the datasheet says 989).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PEAK_BF16 = 790e12

# The mid-size Qwen3-style MoE (Qwen3-30B-A3B's layer at a sixth of its experts and a third of
# its depth): 3.34B parameters, 1.22B active per token. Sized for one H200 under every engine at
# seq 4096 x batch 2: DeepSpeed ZeRO-2 in bf16 keeps ~20 bytes per parameter (bf16 weights and
# gradients, fp32 master weights, gradients and Adam moments), 67 GB, before activations.
MID = {"hidden_size": 2048, "num_layers": 16, "num_heads": 32, "num_kv_heads": 4, "head_dim": 128,
       "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 32, "experts_per_token": 8,
       "vocab_size": 151936, "tie_word_embeddings": False, "max_position_embeddings": 4096,
       "rope_theta": 1000000.0}


def compose(*overrides: str):
    """The config `lwm` would run with these overrides (configs/ and the typed schema)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from launch import CONFIG_DIR
    from lwm.config import register_configs
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose("config", overrides=["wandb.mode=disabled", *overrides])


def model_overrides(sizes: dict) -> list[str]:
    return [f"model.{k}={v}" for k, v in sizes.items()]


def active_params(m, vocab: int) -> int:
    """Parameters a token multiplies with (qwen3_moe layers): attention projections, the k routed
    experts and the router in every layer, and the output head."""
    attn = m.hidden_size * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    experts = 3 * m.hidden_size * m.moe_intermediate_size * m.experts_per_token
    shared = 3 * m.hidden_size * m.shared_expert_intermediate_size
    return m.num_layers * (attn + experts + shared + m.hidden_size * m.num_experts) + vocab * m.hidden_size


def total_params(m, vocab: int) -> int:
    """Every weight matrix of the model (qwen3_moe layers; norms left out): all experts, the
    embedding and, untied, the output head."""
    attn = m.hidden_size * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    experts = 3 * m.hidden_size * m.moe_intermediate_size * m.num_experts
    shared = 3 * m.hidden_size * m.shared_expert_intermediate_size
    ends = vocab * m.hidden_size * (1 if m.tie_word_embeddings else 2)
    return m.num_layers * (attn + experts + shared + m.hidden_size * m.num_experts) + ends


def flops_per_token(m, vocab: int, seq: int) -> float:
    return 6.0 * active_params(m, vocab) + 6.0 * m.num_layers * m.num_heads * m.head_dim * seq


class SyntheticRows:
    """Uniformly random token rows, batch k drawn from seed k: what the loop's readers hand it."""

    n = 1 << 30

    def __init__(self, vocab: int, seq: int):
        self.vocab, self.seq = vocab, seq

    def batch(self, k: int, batch_size: int):
        import torch
        g = torch.Generator().manual_seed(k)
        ids = torch.randint(0, self.vocab, (batch_size, self.seq), generator=g)
        return ids, ids.clone()


class VocabOnly:
    """The tokenizer as the engines use it without a real one: its size."""

    name_or_path = "synthetic"

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@contextlib.contextmanager
def weights_from_config(engine):
    """engine.setup(None) with its start weights drawn from config on the device instead of read
    from the saved HF start (lwm.train.engines.start_checkpoint, and for Megatron its import into a
    dist checkpoint and the load of that); everything else setup does runs as written."""
    import torch

    from lwm.train import dist as pdist
    cfg, job = engine.cfg, engine.job
    module = sys.modules[type(engine).__module__]
    patches = [mock.patch.object(module, "start_checkpoint", lambda *a, **k: Path("weights-from-config"))]
    if engine.name == "megatron":
        from megatron.core import dist_checkpointing

        from lwm.models import megatron_ckpt
        patches += [mock.patch.object(megatron_ckpt, "run_in_own_process", lambda *a, **k: None),
                    mock.patch.object(dist_checkpointing, "load",
                                      lambda sharded, path: {"model": engine.model.module.state_dict()})]
    else:
        import lwm.models.hf as hf
        vocab = len(job.tok)

        def fresh(path, mcfg=None, dtype="float32"):
            torch.manual_seed(cfg.seed)
            with torch.device(pdist.device()):
                model = hf.build_model(cfg.model, vocab)
            return model.to(hf.DTYPES[dtype])
        patches.append(mock.patch.object(hf, "load_model", fresh))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def measure(cfg, steps: int, warmup: int, tok=None, peak: float = PEAK_BF16) -> dict:
    """Build cfg.backend's engine for a CPT job on synthetic rows, train warmup + steps steps
    through engine.step and time the last `steps`."""
    import torch

    from lwm.tracking import RunPaths
    from lwm.train.data import rank_batch
    from lwm.train.engines import get_engine
    from lwm.train.loop import Job
    from lwm.train.optim import spec
    tcfg, seq = cfg.cpt, cfg.data.seq_len
    if tok is None and not cfg.model.vocab_size:
        raise ValueError("measure: give a tokenizer or set model.vocab_size")
    tok = tok or VocabOnly(cfg.model.vocab_size)
    vocab = cfg.model.vocab_size or len(tok)
    job = Job(stage="cpt", tcfg=tcfg, tok=tok, train=SyntheticRows(vocab, seq), heldout=None,
              seq_len=seq, init=None)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t_setup = time.perf_counter()
        engine = get_engine(cfg.backend.name)(cfg, job, RunPaths(Path(tmp)))
        with weights_from_config(engine):
            engine.setup(None)
        setup_s = time.perf_counter() - t_setup
        optim, losses, t0 = spec(tcfg), [], time.perf_counter()
        for step in range(warmup + steps):
            if step == warmup:
                sync()
                t0 = time.perf_counter()
            micro = [rank_batch(job.train, step, k, tcfg.grad_accum, engine.dp_rank, engine.dp, tcfg.batch_size)
                     for k in range(tcfg.grad_accum)]
            loss, _ = engine.step(micro, optim.lr_at(step))
            losses.append(round(loss, 4))
        sync()
        seconds = time.perf_counter() - t0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    tokens = steps * tcfg.grad_accum * tcfg.batch_size * seq * engine.dp
    tps = tokens / seconds
    per_token = flops_per_token(cfg.model, vocab, seq)
    return {"tokens_per_s": round(tps, 1), "mfu": round(tps * per_token / (peak * world), 4),
            "step_s": round(seconds / steps, 3), "setup_s": round(setup_s, 1), "losses": losses,
            "params_b": total_params(cfg.model, vocab) / 1e9, "active_params_b": active_params(cfg.model, vocab) / 1e9,
            "flops_per_token": per_token, "peak_flops": peak, "world": world, "layout": engine.describe(),
            "seq": seq, "batch": tcfg.batch_size * tcfg.grad_accum,
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="hf,deepspeed,megatron")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides, e.g. model.num_layers=24")
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("bench_backends measures GPUs (bench/gpu_check.py --cpu runs the same code at tiny sizes)")
    results, run_dir = {}, tempfile.mkdtemp(prefix="bench_backends_")
    for name in args.backends.split(","):
        torch.cuda.empty_cache()
        cfg = compose(f"run_dir={run_dir}", *backend_overrides(name, args.seq, args.batch), *args.set)
        results[name] = measure(cfg, args.steps, args.warmup)
    from lwm.train import dist as pdist
    if pdist.is_main():
        print(json.dumps({"device": torch.cuda.get_device_name(), **vars(args), "results": results}, indent=1))


def backend_overrides(name: str, seq: int, batch: int, sizes: dict | None = None, dtype: str = "bfloat16",
                      recompute: bool = True) -> list[str]:
    """The overrides of one backend's throughput run: the model, seq x batch rows, bf16, and for
    Megatron the torch-layer spec (grouped GEMM needs Transformer Engine) with the attention
    recomputed in backward: its torch attention keeps the whole seq x seq score matrix per layer."""
    o = [f"backend={name}", f"backend.dtype={dtype}", f"data.seq_len={seq}", f"cpt.batch_size={batch}",
         "cpt.warmup_steps=0", *model_overrides(sizes or MID)]
    if name == "megatron":
        te = have_te()
        o += [f"backend.megatron.grouped_gemm={str(te).lower()}"]
        if recompute and not te:
            o += ["backend.megatron.recompute_granularity=selective"]
    return o


def have_te() -> bool:
    import importlib.util
    return importlib.util.find_spec("transformer_engine") is not None


if __name__ == "__main__":
    main()
