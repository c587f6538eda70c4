"""One GPU check, prepared: numerics, throughput and MFU of every engine, HF <-> Megatron conversion
and one GRPO step, printed as one table, in one call on one H200 (bench/gpu_check.sh); with --cpu
the same rows at tiny sizes through the same code (tests/test_gpu_check.py), so it never rots.

    bash bench/gpu_check.sh --out DIR                # the GPU machine: installs bench/wheels, then this
    bash bench/gpu_check.sh --cpu --out DIR          # any machine with the project installed
    python bench/gpu_check.py --cpu --record         # writes bench/gpu_check_reference.json

Rows, each in its own process under a time budget (a failing row records its error and the check
goes on; the table in DIR is rewritten after every row, so a killed run leaves what it measured):
  setup             what every row reads, made without collect or datatrove: tests/data's recorded
                    terminal trajectories rendered as `lwm prepare` renders them (a BPE tokenizer,
                    packed CPT shards, SFT and RL rows) and the start checkpoints; the device and its
                    measured matrix rate
  numerics_cpt      `lwm cpt` (backend=hf) on the tiny MoE: the loss of each step against the CPU
                    fp32 losses in bench/gpu_check_reference.json, within TOLERANCE
  numerics_sft      `lwm sft` (TRL, labels on the target observation only), likewise
  throughput_*      tokens/s and MFU (bench/bench_backends.py) of hf, deepspeed ZeRO-2 and megatron on
                    the mid-size MoE at seq 4096; megatron with its torch-layer spec, and with the TE
                    spec only where Transformer Engine is installed (it cannot be carried: README)
  conversion        `lwm cpt backend=megatron` from an HF start for 2 steps: HF -> Megatron (import),
                    train, Megatron -> HF (export); the exported model's logits equal the trained
                    Megatron model's, and the HF start's equal the imported model's, within LOGIT_TOLERANCE
  rl                `lwm rl` (TRL GRPO, rule reward) with generation on the device: the time of its
                    last step split into generation, scoring and training

Where lwm or megatron-core has a known gap on GPUs, a row works around it and says so in its notes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "bench")) if p not in sys.path]

REFERENCE = ROOT / "bench" / "gpu_check_reference.json"
TRAJECTORIES = ROOT / "tests" / "data" / "terminal_trajectories.jsonl"
VOCAB, SEQ, MAX_HISTORY, STEPS, LR = 512, 256, 2, 6, 1e-2
# The tests' tiny MoE (tests/conftest.py TINY): numerics everywhere, every row on a CPU.
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 32,
        "intermediate_size": 128, "moe_intermediate_size": 64, "num_experts": 4}
# Conversion and RL on the GPU: ~0.1B parameters, big enough for real kernels, small enough that
# the conversions' own processes take seconds.
SMALL = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2, "head_dim": 64,
         "intermediate_size": 1024, "moe_intermediate_size": 512, "num_experts": 16, "experts_per_token": 4}
# Per step, |loss - reference| <= TOLERANCE * reference. The numerics rows train at LR for STEPS
# steps, which takes the loss from 6.24 (ln 512) to about 5.3: a step that does not learn, or
# learns from other tokens, ends far outside. bf16 against fp32: the same rows trained in bf16 on
# a CPU stay within 0.1% of fp32 (CPT 0.06%, SFT 0.05%); 1% leaves room for other kernels' order
# and precision. fp32 against fp32 (--cpu): only the order of summation differs.
TOLERANCE = {"cuda": 1e-2, "cpu": 1e-4}
# max |logits - reference| <= LOGIT_TOLERANCE * max |reference| (both fp32; other kernels)
LOGIT_TOLERANCE = {"cuda": 1e-4, "cpu": 1e-5}
GOALS = {"hf": 0.20, "megatron": 0.35}  # MFU goals on the H200 (README)
TE_MISSING = ("Transformer Engine is not installed. It cannot be carried: transformer_engine_cu13 "
              "2.20.2 is a 276.5 MB wheel (the call carries 64 MiB in all) and transformer_engine_torch "
              "is an sdist that compiles against the machine's torch for tens of minutes")


@dataclass
class Row:
    key: str
    title: str
    budget: tuple[int, int]     # seconds on a GPU, on a CPU
    as_rank: bool = False       # run as rank 0 of a one-rank job (torchrun's variables; NCCL on a GPU)


ROWS = [
    Row("setup", "setup: prepared data, start checkpoints, device", (90, 300)),
    Row("numerics_cpt", "numerics: CPT loss per step (hf), device vs CPU fp32 reference", (90, 300)),
    Row("numerics_sft", "numerics: SFT loss per step (TRL, observation labels) vs reference", (120, 300)),
    Row("throughput_hf", "throughput: hf (torch loop)", (120, 300)),
    Row("throughput_deepspeed", "throughput: deepspeed ZeRO-2", (150, 400), as_rank=True),
    Row("throughput_megatron", "throughput: megatron, torch-layer spec", (150, 300), as_rank=True),
    Row("throughput_megatron_te", "throughput: megatron, Transformer Engine spec", (150, 300), as_rank=True),
    Row("conversion", "conversion: HF -> Megatron -> 2 steps -> HF, logits equal", (150, 400), as_rank=True),
    Row("rl", "rl: one GRPO step, generation on the device", (120, 400)),
]


# ---- the rows (each runs in its own process: `--row KEY`) ----

class Ctx:
    """What a row knows: the mode, the work folder, the check's arguments, the fixture."""

    def __init__(self, args):
        import torch
        self.args, self.work = args, Path(args.work)
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.device = "cuda" if self.cuda else "cpu"
        self.fixture = self.work / "fixture"
        self.prepared = self.fixture / "prepare"
        self.init_tiny = self.fixture / "init_tiny"
        self.init_small = self.fixture / "init_small" if self.cuda else self.init_tiny
        self.small = SMALL if self.cuda else TINY
        self.setup = _read(self.work / "setup.json").get("metrics", {})

    def compose(self, key: str, *overrides: str):
        """The config of `lwm <stage>` with these overrides, in a run folder of its own that
        reads the fixture's prepared data."""
        from bench_backends import compose
        run = self.work / key
        shutil.rmtree(run, ignore_errors=True)  # a row trains from the start, never resumes
        run.mkdir(parents=True)
        (run / "prepare").symlink_to(self.prepared)
        return compose(f"run_dir={run}", *overrides)

    def dtype(self) -> str:
        return "float32" if self.args.record or not self.cuda else "bfloat16"


def row_setup(ctx: Ctx) -> dict:
    import torch
    inputs = build_fixture(ctx)
    env = versions()
    if ctx.cuda:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        flop, n = 2 * 8192 ** 3, 10
    else:
        a = torch.randn(1024, 1024)
        flop, n = 2 * 1024 ** 3, 5
    for _ in range(3):
        a @ a
    sync(ctx)
    t = time.perf_counter()
    for _ in range(n):
        a @ a
    sync(ctx)
    rate = flop * n / (time.perf_counter() - t)
    name = torch.cuda.get_device_name() if ctx.cuda else f"CPU ({os.cpu_count()} cores)"
    kind = "bf16" if ctx.cuda else "fp32"
    return {"status": "ok", "summary": f"{name}: {kind} matrix products at {rate / 1e12:.3g} TFLOP/s measured; "
                                      f"{inputs['cpt_rows']} CPT rows, {inputs['sft_rows']} SFT and "
                                      f"{inputs['rl_rows']} RL rows",
            "metrics": {"device": name, "matmul_flops": rate, "inputs": inputs, "env": env}}


def row_numerics_cpt(ctx: Ctx) -> dict:
    import pretrain.train
    from lwm.tracking import RunPaths
    from lwm.train import loop
    cfg = ctx.compose("numerics_cpt", "backend=hf", f"backend.dtype={ctx.dtype()}", f"data.seq_len={SEQ}",
                      *_model(TINY), f"cpt.init={ctx.init_tiny}", f"cpt.max_steps={STEPS}",
                      f"cpt.save_every={STEPS}", "cpt.log_every=1", "cpt.batch_size=4", "cpt.warmup_steps=0",
                      f"cpt.lr={LR}")
    logged = []

    class Recording(loop.Tracker):
        def log(self, metrics, step=None):
            logged.append(metrics["loss"])
            super().log(metrics, step)
    with mock.patch.object(loop, "Tracker", Recording):
        pretrain.train.train(cfg, RunPaths(Path(cfg.run_dir)))
    return against_reference(ctx, "cpt", logged)


def row_numerics_sft(ctx: Ctx) -> dict:
    import sft.train
    from lwm.tracking import RunPaths
    cfg = ctx.compose("numerics_sft", "backend=hf", f"backend.dtype={ctx.dtype()}", *_model(TINY),
                      f"sft.init={ctx.init_tiny}", f"sft.max_steps={STEPS}", f"sft.save_every={STEPS}",
                      "sft.log_every=1", "sft.batch_size=2", "sft.max_length=1024", f"sft.lr={LR}")
    metrics = sft.train.train(cfg, RunPaths(Path(cfg.run_dir)))
    state = _read(Path(cfg.run_dir) / "sft" / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json")
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    result = against_reference(ctx, "sft", losses)
    result["metrics"].update(samples=metrics["samples"], trained_tokens=metrics["trained_tokens"])
    return result


def row_throughput(ctx: Ctx, backend: str, te: bool = False) -> dict:
    import bench_backends as bb
    if te != bb.have_te():
        return {"status": "not run", "summary": TE_MISSING if te else "Transformer Engine is installed: "
                "the megatron rows use its spec (next row)"}
    notes = megatron_gaps(ctx) if backend == "megatron" else []
    a = ctx.args
    sizes, seq, batch = (bb.MID, a.seq, a.batch) if ctx.cuda else ({**TINY, "vocab_size": 0}, SEQ, 4)
    # Megatron recomputes its attention in backward on the GPU (bench_backends.backend_overrides);
    # on a CPU the recompute runs outside lwm.models.megatron_cpu's device mapping, and is not needed
    cfg = ctx.compose(f"throughput_{backend}", *bb.backend_overrides(backend, seq, batch, sizes, ctx.dtype(),
                                                                     recompute=ctx.cuda), *a.set)
    tok = None if ctx.cuda else _tokenizer(ctx)
    # on a CPU, MFU is against the fp32 matrix rate the setup row measured
    peak = bb.PEAK_BF16 if ctx.cuda else ctx.setup["matmul_flops"]
    steps, warmup = (a.steps, a.warmup) if ctx.cuda else (2, 1)
    r = bb.measure(cfg, steps, warmup, tok, peak)
    goal = GOALS.get(backend)
    met = "" if goal is None or not ctx.cuda else f" (goal >= {goal:.0%}: {'met' if r['mfu'] >= goal else 'not met'})"
    mem = f", peak memory {r['peak_mem_gb']} GiB" if r["peak_mem_gb"] is not None else ""
    return {"status": "ok", "notes": notes,
            "summary": f"{r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.1%}{met}; {_size(r['params_b'])} parameters "
                       f"({_size(r['active_params_b'])} active), {_short(ctx.dtype())}, "
                       f"seq {seq} x batch {r['batch']}, {r['step_s']} s/step{mem}",
            "metrics": {**r, "goal": goal}}


def row_conversion(ctx: Ctx) -> dict:
    import pretrain.train
    from lwm.tracking import RunPaths
    from lwm.train import loop
    from lwm.train.data import PackedShards
    notes = megatron_gaps(ctx)
    cfg = ctx.compose("conversion", "backend=megatron", "backend.dtype=float32", "backend.megatron.grouped_gemm=false",
                      f"data.seq_len={SEQ}", *_model(ctx.small), f"cpt.init={ctx.init_small}", "cpt.max_steps=2",
                      "cpt.save_every=2", "cpt.batch_size=2", "cpt.warmup_steps=0", "cpt.log_every=1")
    engines, get_engine = [], loop.get_engine

    def keep(name):
        cls = get_engine(name)
        return lambda *a: engines.append(cls(*a)) or engines[-1]
    run = Path(cfg.run_dir)
    with mock.patch.object(loop, "get_engine", keep):  # the engine, kept for the logits after the run
        metrics = pretrain.train.train(cfg, RunPaths(run))
    engine = engines[0]
    if getattr(engine.model, "use_forward_hook", False):  # no more steps: the weights stay as they are
        engine.model.disable_forward_pre_hook(param_sync=True)
    tok = _tokenizer(ctx)
    ids = PackedShards(ctx.prepared / "cpt" / "train", 0, tok.pad_token_id).batch(0, 2)[0]
    trained = compare_logits(megatron_logits(engine, ids), hf_logits(ctx, run / "cpt" / "final", ids))
    # the import direction: the dist checkpoint the run started from, loaded into the same model
    from megatron.core import dist_checkpointing
    module = engine.model.module
    state = dist_checkpointing.load({"model": module.sharded_state_dict()}, str(run / "cpt" / "checkpoints" / "init"))
    module.load_state_dict(state["model"])
    start = compare_logits(megatron_logits(engine, ids), hf_logits(ctx, ctx.init_small, ids))
    tol = LOGIT_TOLERANCE[ctx.device]
    ok = trained["rel"] <= tol and start["rel"] <= tol and metrics["steps"] == 2
    return {"status": "pass" if ok else "fail", "notes": notes,
            "summary": f"largest logit difference over the largest logit (fp32): trained Megatron vs exported HF "
                       f"{trained['rel']:.1e}, HF start vs imported Megatron {start['rel']:.1e} (tolerance {tol:.0e}); "
                       f"loss {metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}",
            "metrics": {"trained": trained, "start": start, "tolerance": tol, "layout": metrics["layout"]}}


def row_rl(ctx: Ctx) -> dict:
    import rl.train
    from accelerate.optimizer import AcceleratedOptimizer

    from lwm.tracking import RunPaths
    steps, batch, gens, length = (2, 8, 4, 128) if ctx.cuda else (1, 2, 2, 16)
    cfg = ctx.compose("rl", "backend=hf", f"backend.dtype={ctx.dtype()}", *_model(ctx.small),
                      f"rl.init={ctx.init_small}", f"rl.max_steps={steps}", "rl.save_every=1000", "rl.log_every=1",
                      f"rl.batch_size={batch}", f"rl.num_generations={gens}", f"rl.max_completion_length={length}")
    trainer = rl.train.Trainer
    parts = {"generation": (trainer, "_generate"), "rollout": (trainer, "_generate_and_score_completions"),
             "step": (trainer, "training_step"), "optimizer": (AcceleratedOptimizer, "step")}
    with timed(ctx, parts) as times:
        metrics = rl.train.train(cfg, RunPaths(Path(cfg.run_dir)))
    gen, rollout = times["generation"][-1], times["rollout"][-1]
    train = times["step"][-1] - rollout + times["optimizer"][-1]
    last = metrics["per_step"][-1] if metrics.get("per_step") else {}
    completions = batch * last.get("completions/mean_length", 0)
    split = {"generation_s": round(gen, 2), "scoring_s": round(rollout - gen, 2), "training_s": round(train, 2),
             "step_s": round(rollout + train, 2), "first_step_s": round(times["step"][0], 2),
             "completion_tokens": round(completions), "generated_tokens_per_s": round(completions / gen, 1)}
    return {"status": "ok", "summary": f"step {steps}: generation {split['generation_s']} s "
                                       f"({split['generated_tokens_per_s']:.0f} tokens/s), scoring "
                                       f"{split['scoring_s']} s, training {split['training_s']} s; "
                                       f"{batch // gens} prompt(s) x {gens} completions of up to {length} tokens, "
                                       f"{_short(ctx.dtype())}",
            "metrics": {**split, "reward_last": metrics.get("reward_last"), "steps": metrics["steps"]}}


ROW_FUNCS = {"setup": row_setup, "numerics_cpt": row_numerics_cpt, "numerics_sft": row_numerics_sft,
             "throughput_hf": lambda c: row_throughput(c, "hf"),
             "throughput_deepspeed": lambda c: row_throughput(c, "deepspeed"),
             "throughput_megatron": lambda c: row_throughput(c, "megatron"),
             "throughput_megatron_te": lambda c: row_throughput(c, "megatron", te=True),
             "conversion": row_conversion, "rl": row_rl}


# ---- what the rows share ----

def megatron_gaps(ctx: Ctx) -> list[str]:
    """Megatron on this device, with the gaps that stop it worked around and named: on a CPU the
    test patches (lwm.models.megatron_cpu); on a GPU without Transformer Engine, megatron-core
    0.16.1's router calls te_general_gemm, which only TE defines; and the megatron engine
    all-reduces its loss as a CPU tensor, which the NCCL-only group of lwm.train.dist.init refuses."""
    import torch
    import torch.distributed as dist

    from lwm.train import dist as pdist
    if not ctx.cuda:
        from lwm.models import megatron_cpu
        megatron_cpu.enable(training=True)
        return []
    notes = []
    import megatron.core.transformer.moe.moe_utils as moe_utils
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
        notes.append("megatron-core gap: without Transformer Engine, moe_utils.router_gating_linear calls "
                     "te_general_gemm, which is undefined (NameError); set to None here, as "
                     "lwm.models.megatron_cpu does on a CPU")
    pdist.init(always=True)
    try:
        dist.all_reduce(torch.zeros(1))
    except Exception as e:  # noqa: BLE001 - RuntimeError or DistBackendError, by torch version
        dist.destroy_process_group()
        dist.init_process_group("cuda:nccl,cpu:gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1)
        notes.append("lwm gap: lwm.train.dist.init makes an NCCL-only process group, and the megatron engine "
                     f"all-reduces its loss as a CPU tensor (_mean_loss), which it refuses ({str(e)[:80]}); "
                     "this row's group is cuda:nccl,cpu:gloo")
    return notes


def against_reference(ctx: Ctx, stage: str, losses: list[float]) -> dict:
    """The losses of each step against the recorded CPU fp32 ones (or, with --record, the record)."""
    inputs = ctx.setup.get("inputs", {})
    metrics = {"losses": [round(x, 5) for x in losses]}
    if ctx.args.record:
        return {"status": "recorded", "summary": f"{len(losses)} losses recorded", "metrics": metrics}
    ref = _read(REFERENCE)
    want = ref.get("inputs", {})
    differ = sorted(k for k in want if inputs.get(k) != want[k])
    if differ:
        return {"status": "fail", "metrics": metrics,
                "summary": f"the inputs differ from the reference's ({', '.join(differ)}): the code or a library "
                           "renders, tokenizes or initialises otherwise; where that is intended, record again "
                           "(--cpu --record)"}
    expected = ref[stage]
    tol = TOLERANCE[ctx.device]
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, expected)]
    ok = len(losses) == len(expected) and max(rel) <= tol
    metrics.update(reference=expected, max_rel_diff=max(rel), tolerance=tol)
    return {"status": "pass" if ok else "fail", "metrics": metrics,
            "summary": f"{len(losses)} steps, {_short(ctx.dtype())} on {ctx.device} vs recorded fp32 CPU: max relative "
                       f"difference {max(rel):.2e} (tolerance {tol:.0e}); loss {losses[0]:.4f} -> {losses[-1]:.4f}"}


def megatron_logits(engine, ids):
    import torch
    module = engine.model.module.eval()
    ids = ids.to(engine.dev)
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return module(ids, pos, None).float().cpu()


def hf_logits(ctx: Ctx, path: Path, ids):
    """The HF model's logits in fp32, its experts one matmul each (grouped_mm kernels are bf16's)."""
    import torch

    from lwm.config import ModelConfig
    from lwm.models.hf import load_model
    model = load_model(path, ModelConfig(experts_implementation="eager"), "float32").to(ctx.device).eval()
    with torch.no_grad():
        return model(input_ids=ids.to(ctx.device)).logits.float().cpu()


def compare_logits(ours, ref) -> dict:
    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    return {"max_abs_diff": diff, "scale": scale, "rel": diff / scale,
            "argmax_agree": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()}


@contextlib.contextmanager
def timed(ctx: Ctx, parts: dict):
    """Wall time of each call of the methods named in `parts` ({name: (owner, attribute)}),
    the device synchronised around each."""
    times = {name: [] for name in parts}
    with contextlib.ExitStack() as stack:
        for name, (owner, attr) in parts.items():
            def wrapped(*a, _orig=getattr(owner, attr), _name=name, **k):
                sync(ctx)
                t = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    sync(ctx)
                    times[_name].append(time.perf_counter() - t)
            stack.enter_context(mock.patch.object(owner, attr, wrapped))
        yield times


def sync(ctx: Ctx) -> None:
    if ctx.cuda:
        import torch
        torch.cuda.synchronize()


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float32": "fp32"}[dtype]


def _size(billions: float) -> str:
    return f"{billions:.2f}B" if billions >= 1 else f"{billions * 1e3:.3g}M"


def _model(sizes: dict) -> list[str]:
    from bench_backends import model_overrides
    return model_overrides(sizes)


def _tokenizer(ctx: Ctx):
    from lwm.tokenizer import load_tokenizer
    return load_tokenizer(ctx.prepared / "tokenizer")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "tokenizers", "accelerate", "trl", "datasets", "deepspeed", "megatron-core",
                 "transformer-engine", "hydra-core", "pyarrow", "numpy"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    return env


# ---- the fixture: a prepared run without collect or datatrove ----

def build_fixture(ctx: Ctx) -> dict:
    """tests/data's terminal trajectories rendered as `lwm prepare` renders them: a byte-level BPE
    trained on their CPT documents, the documents packed into CPT rows (Megatron's indexed format,
    which lwm.train.data.PackedShards reads), one SFT row per turn and one RL row per trajectory
    (parquet, recorded in a manifest as prepare records them), and the start checkpoints. Returns
    the fingerprints of what the numerics rows compare: a library that tokenizes, renders or
    initialises otherwise changes them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from lwm import render
    from lwm.domains import get_domain
    from lwm.schema import Trajectory
    from lwm.tokenizer import train_tokenizer
    from lwm.tracking import file_record
    shutil.rmtree(ctx.fixture, ignore_errors=True)
    prep = ctx.prepared
    trajs = [Trajectory.from_dict(json.loads(line)) for line in TRAJECTORIES.read_text().splitlines() if line.strip()]
    domain = get_domain("terminal")
    docs = [render.cpt_document(domain, t) for t in trajs]
    tok = train_tokenizer(docs, VOCAB, prep / "tokenizer")
    stream = [i for d in docs for i in tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]]
    (prep / "cpt").mkdir(parents=True)
    builder = IndexedDatasetBuilder(str(prep / "cpt" / "train.bin"), dtype=np.int32)
    rows = range(0, len(stream) - SEQ + 1, SEQ)
    for s in rows:
        builder.add_document(np.array(stream[s:s + SEQ], dtype=np.int32), [SEQ])
    builder.finalize(str(prep / "cpt" / "train.idx"))
    sft_rows, rl_rows = [], []
    for traj in trajs:
        turns = list(range(1, len(traj.steps) + 1))
        for t in turns:
            prompt, answer = render.turn_messages(domain, traj, t, MAX_HISTORY, render.FIRST_SFT_VARIANT)
            sft_rows.append({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t, "copy": 0,
                             "prompt_variant": render.FIRST_SFT_VARIANT, "prompt": prompt, "completion": [answer]})
        t = turns[len(turns) // 2]
        prompt, _ = render.turn_messages(domain, traj, t, MAX_HISTORY)
        rl_rows.append({"id": f"{traj.id}-t{t}", "domain": traj.domain, "turn_idx": t, "copy": 0,
                        "prompt": prompt, "reference": traj.steps[t - 1].observation})
    files = {}
    for name, data in (("sft", sft_rows), ("rl", rl_rows)):
        (prep / name).mkdir()
        path = prep / name / "part-00000.parquet"
        pq.write_table(pa.Table.from_pylist(data), path)
        files[f"{name}/{path.name}"] = file_record(path)
    cpt = {"train": {"sequences": len(rows), "tokens": len(rows) * SEQ}}
    (prep / "manifest.json").write_text(json.dumps({"files": files, "cpt": cpt}, indent=1))
    weights = save_init(ctx, tok, TINY, ctx.init_tiny, deterministic=True)
    if ctx.init_small != ctx.init_tiny:
        save_init(ctx, tok, SMALL, ctx.init_small, deterministic=False)
    return {"tokenizer": _digest(sorted(tok.get_vocab().items())),
            "cpt_shards": hashlib.sha256(b"".join((prep / "cpt" / f).read_bytes()
                                                  for f in ("train.bin", "train.idx"))).hexdigest()[:16],
            "sft": _digest(sft_rows), "rl": _digest(rl_rows), "init_weights": weights,
            "cpt_rows": len(rows), "sft_rows": len(sft_rows), "rl_rows": len(rl_rows)}


def save_init(ctx: Ctx, tok, sizes: dict, out: Path, deterministic: bool) -> str:
    """A start checkpoint of the model config `sizes` with the fixture's tokenizer. The tiny one's
    weights come from numpy's PCG64 by parameter name, so they are the same bits under any torch
    or transformers version; returns their fingerprint."""
    import numpy as np
    import torch

    from bench_backends import compose
    from lwm.models.hf import build_model
    mcfg = compose(*_model(sizes)).model
    torch.manual_seed(0)
    with torch.device("cuda" if ctx.cuda and not deterministic else "cpu"):
        model = build_model(mcfg, len(tok), tok)
    h = hashlib.sha256()
    if deterministic:
        rng = np.random.default_rng(0)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                value = np.ones(p.shape, np.float32) if name.endswith("norm.weight") else \
                    (rng.standard_normal(p.shape, dtype=np.float32) * 0.02)
                p.copy_(torch.from_numpy(value))
                h.update(name.encode() + value.tobytes())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return h.hexdigest()[:16]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


# ---- the check: rows in their own processes, one table ----

def run_row(row: Row, args, timeout: float, **changes) -> dict:
    """`--row KEY` in a child process (its own session: a timeout kills it and whatever it
    started); its result, or its error with the end of its log."""
    work = Path(args.work)
    out, log = work / f"{row.key}.json", work / f"{row.key}.log"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--row", row.key, *child_args(args, **changes)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if row.as_rank:  # as torchrun starts rank 0 of a one-rank job
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = _read(out) or {"status": "timeout" if proc.returncode == -signal.SIGKILL else "error",
                            "error": f"exit {proc.returncode} after {time.time() - t:.0f} s (budget {timeout:.0f} s): "
                                     + tail(log, 6)}
    return {**result, "seconds": round(time.time() - t, 1)}


def child(args) -> None:
    """One row in this process: its result (or error) into <work>/<row>.json."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    t = time.time()
    try:
        result = ROW_FUNCS[args.row](Ctx(args))
    except BaseException as e:  # noqa: BLE001 - the row's failure is its result
        result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
        traceback.print_exc()
    result["seconds"] = round(time.time() - t, 1)
    (Path(args.work) / f"{args.row}.json").write_text(json.dumps(result, indent=1, default=str))


def check(args) -> int:
    cpu = args.cpu
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.work = str(Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve())
    Path(args.work).mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    table = {"mode": "cpu" if cpu else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": [],
             "tolerance": {"loss_rel": TOLERANCE["cpu" if cpu else "cuda"],
                           "logits_rel": LOGIT_TOLERANCE["cpu" if cpu else "cuda"]},
             "mfu": "tokens/s x (6 x active params + 6 x layers x heads x head_dim x seq) / " + (
                 "the setup row's measured fp32 matrix rate (CPU)" if cpu else "790 TFLOP/s (H200 bf16, measured)"),
             "work": args.work}
    rows = [r for r in ROWS if not args.rows or r.key in args.rows.split(",") or r.key == "setup"]
    if args.record:
        rows = [r for r in ROWS if r.key in ("setup", "numerics_cpt", "numerics_sft")]
    t0 = time.time()
    for row in rows:
        left = deadline - time.time()
        setup_failed = row.key != "setup" and table["rows"][0]["status"] != "ok"
        if setup_failed or left < 20:
            result = {"status": "skipped", "summary": "the setup row failed" if setup_failed else
                      f"out of time ({args.budget:.0f} s for the whole check)", "seconds": 0}
        else:
            print(f"gpu_check: {row.key} (up to {min(row.budget[cpu], left):.0f} s)", flush=True)
            result = run_row(row, args, min(row.budget[cpu], left))
            if row.key.startswith("throughput") and "out of memory" in result.get("error", "") and args.batch > 1:
                first, left = result, deadline - time.time()
                if left > 60:  # half the batch, noted
                    result = run_row(row, args, min(row.budget[cpu], left), batch=args.batch // 2)
                    result.setdefault("notes", []).append(f"batch {args.batch} ran out of memory "
                                                          f"({first['error'][:120]}); batch {args.batch // 2}")
        table["rows"].append({"row": row.key, "title": row.title, **result})
        if row.key == "setup" and result.get("metrics"):
            table["device"], table["env"] = result["metrics"]["device"], result["metrics"]["env"]
        table["total_s"] = round(time.time() - t0, 1)
        write_table(table, out, args.work)
        print(f"gpu_check: {row.key}: {result['status']} ({result.get('seconds', 0)} s) "
              f"{result.get('summary') or result.get('error', '')}", flush=True)
    if args.record:
        record_reference(table, args.work)
    print((out / "gpu_check.md").read_text())
    bad = [r["row"] for r in table["rows"] if r["status"] in ("error", "fail", "timeout", "skipped")]
    return 1 if bad else 0


def record_reference(table: dict, work: str) -> None:
    import platform
    rows = {r["row"]: r for r in table["rows"]}
    if any(rows[k]["status"] != "recorded" for k in ("numerics_cpt", "numerics_sft")):
        raise SystemExit("gpu_check --record: a numerics row did not run; nothing written")
    setup = rows["setup"]["metrics"]
    REFERENCE.write_text(json.dumps({
        "about": "CPU fp32 losses of the tiny MoE (gpu_check.TINY) per step, from the fixture's inputs; "
                 "written by `python bench/gpu_check.py --cpu --record`, read by its numerics rows",
        "recorded": {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), **setup["env"]},
        "inputs": setup["inputs"], "steps": STEPS,
        "cpt": rows["numerics_cpt"]["metrics"]["losses"], "sft": rows["numerics_sft"]["metrics"]["losses"]},
        indent=1) + "\n")
    print(f"gpu_check: wrote {REFERENCE}")


def write_table(table: dict, out: Path, work: str) -> None:
    """gpu_check.json and gpu_check.md in `out`, and log.txt: the end of every row's log."""
    (out / "gpu_check.json").write_text(json.dumps(table, indent=1, default=str))
    lines = [f"# GPU check ({table['mode']} mode): {table.get('device', '?')}, {table['started']}", "",
             f"MFU = {table['mfu']}. Tolerances: loss {table['tolerance']['loss_rel']:.0e} relative per step, "
             f"logits {table['tolerance']['logits_rel']:.0e} of the largest logit.", "",
             "| row | status | result | s |", "|---|---|---|---|"]
    notes = []
    for r in table["rows"]:
        text = r.get("summary") or r.get("error", "")
        lines.append(f"| {r['title']} | {r['status']} | {text.replace('|', '/')} | {r.get('seconds', '')} |")
        notes += [f"- {r['row']}: {n}" for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    env = table.get("env")
    if env:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in env.items() if v)]
    lines += ["", f"Total {table.get('total_s', 0)} s."]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    logs = [f"===== {r['row']}: {r['status']}\n{tail(Path(work) / (r['row'] + '.log'), 80)}" for r in table["rows"]]
    (out / "log.txt").write_text("\n".join(logs) + "\n")


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def child_args(args, **changes) -> list[str]:
    a = {**vars(args), **changes}
    argv = ["--work", a["work"], "--seq", str(a["seq"]), "--batch", str(a["batch"]), "--steps", str(a["steps"]),
            "--warmup", str(a["warmup"])]
    argv += ["--cpu"] * a["cpu"] + ["--record"] * a["record"]
    return argv + (["--set", *a["set"]] if a["set"] else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                    help="where gpu_check.json, gpu_check.md and log.txt go (default $OUT)")
    ap.add_argument("--record", action="store_true", help="--cpu: write bench/gpu_check_reference.json")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 450 on "
                    "a GPU: the call's 8 minutes less the install; 1800 on a CPU)")
    ap.add_argument("--rows", default="", help="comma-separated row keys (default: all)")
    ap.add_argument("--seq", type=int, default=4096, help="throughput rows: sequence length")
    ap.add_argument("--batch", type=int, default=2, help="throughput rows: rows per step")
    ap.add_argument("--steps", type=int, default=8, help="throughput rows: timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="throughput rows: more config overrides")
    ap.add_argument("--work", default="", help="working folder (default: a new temporary one)")
    ap.add_argument("--row", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.cpu = args.cpu or args.record
    if args.row:
        child(args)
        return 0
    if args.budget is None:
        args.budget = 1800.0 if args.cpu else 450.0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
