"""`lwm sft` against the least work its math needs: a bare per-sample torch loop on the same samples.

    python bench/bench_sft.py --run runs/<name> [--repeats 2] [--compare] [--set sft.max_length=2048 ...]

The run must be prepared (`lwm prepare run_name=<name>`). Both sides start from the same
weights (the run's model built from config and saved once), in the same dtype, with the same
AdamW settings, and train one epoch over the run's SFT samples tokenized as `lwm sft` tokenizes
them, grouped into the same steps: the samples of `sft.batch_size` rows of TRL's best-fit-
decreasing packing per optimizer step, the packing `lwm sft` trains on.

- `lwm sft`: the stage itself, in a subprocess (`lwm sft run_dir=<tmp> reuse.prepare=<run>/prepare
  sft.init=<the weights>`), its rate read from its metrics.json (tokens_per_s: the Trainer's
  steady state, lwm.train.trl.StepTimer);
- bare: forward and backward of every sample on its own (no padding, no packing, no mask), the
  loss of each weighted by its share of the step's trained tokens, clipping, optimizer step.

Both rates leave the first step out (allocator warm-up). The best of --repeats runs of each is
reported, the runs interleaved, so a busy machine slows both alike. --compare adds `lwm sft` with
the settings before issue 20 (model.attn_implementation=sdpa: a dense block-diagonal mask over each
packed row; sft.gradient_checkpointing=true: TRL's default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_backends import compose  # noqa: E402

BEFORE = ["model.attn_implementation=sdpa", "sft.gradient_checkpointing=true"]


def prepared(run: Path, overrides: list[str]):
    """(config, tokenizer, packed rows) of the run's SFT samples as `lwm sft` sees them."""
    from trl.data_utils import pack_dataset

    from lwm.tokenizer import load_tokenizer
    from lwm.tracking import RunPaths
    from sft.train import tokenized_samples
    cfg = compose(f"run_dir={run.resolve()}", *overrides)
    tok = load_tokenizer(run / "prepare" / "tokenizer")
    data, stats = tokenized_samples(tok, RunPaths(run.resolve()).shards("sft"), cfg.sft.max_length,
                                    cfg.sft.train_history_observations)
    rows = pack_dataset(data, cfg.sft.max_length, strategy="bfd")
    return cfg, tok, rows, stats


def save_init(cfg, tok, folder: Path) -> None:
    """The run's model built from config: both sides start from these weights."""
    import torch

    from lwm.models.hf import build_model
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(tok), tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def bare(cfg, tcfg, batches, init: Path, router_loss: bool) -> dict:
    """Steady-state tokens/s of the per-sample loop: each batch is a list of (input ids, labels)
    sequences, each run on its own (no padding, no mask), its loss weighted by its share of the
    batch's trained tokens; clipping and the optimizer step once per batch. router_loss: the MoE
    balancing loss, which SFT trains with and GRPO does not."""
    import torch

    from lwm.models.hf import load_model
    model = load_model(init, cfg.model, cfg.backend.dtype)
    model.config.output_router_logits = router_loss
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tuple(tcfg.adam_betas), eps=tcfg.adam_eps,
                            weight_decay=tcfg.weight_decay)
    marks = []
    for samples in batches:
        samples = [(torch.as_tensor(ids)[None], torch.as_tensor(labels)[None]) for ids, labels in samples]
        trained = sum(int((labels[:, 1:] != -100).sum()) for _, labels in samples)
        for ids, labels in samples:
            count = int((labels[:, 1:] != -100).sum())
            if count:
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
                (loss * count / trained).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append((time.perf_counter(), sum(ids.shape[1] for ids, _ in samples)))
    return rate(marks)


def sft_batches(cfg, rows):
    """The packed rows' samples, grouped into SFT's optimizer steps."""
    per_step = cfg.sft.batch_size * cfg.sft.grad_accum
    for first in range(0, len(rows), per_step):
        samples = []
        for row in rows.select(range(first, min(first + per_step, len(rows)))):
            start = 0
            for n in row["seq_lengths"]:
                samples.append((row["input_ids"][start:start + n], row["labels"][start:start + n]))
                start += n
        yield samples


def rl_batches(rollouts: list):
    """GRPO's rollouts as sequences: prompt and completion without padding, the loss on the
    completion's tokens."""
    import torch
    for b in rollouts:
        samples = []
        for i in range(len(b["prompt_ids"])):
            prompt = b["prompt_ids"][i][b["prompt_mask"][i].bool()]
            completion = b["completion_ids"][i][b["completion_mask"][i].bool()]
            ids = torch.cat([prompt, completion])
            labels = ids.clone()
            labels[:len(prompt)] = -100
            samples.append((ids, labels))
        yield samples


def rate(marks: list[tuple[float, int]]) -> dict:
    """tokens/s from the end of the first step to the end of the last (tokens per step given)."""
    if len(marks) < 2:
        raise SystemExit("bench_sft: fewer than 2 steps in one epoch: lower sft.batch_size or use a larger run")
    tokens = sum(n for _, n in marks[1:])
    return {"tokens_per_s": round(tokens / (marks[-1][0] - marks[0][0]), 1), "timed_steps": len(marks) - 1}


def lwm_sft(run: Path, init: Path, steps: int, overrides: list[str], work: Path, label: str) -> dict:
    """The stage in a subprocess, on its own run folder; its metrics.json."""
    run_dir = work / label
    cmd = [sys.executable, "-m", "launch.cli", "sft", f"run_dir={run_dir}",
           f"reuse.prepare={(run / 'prepare').resolve()}", f"sft.init={init}", f"sft.max_steps={steps}",
           "sft.save_every=1000000", "sft.resume=never", "wandb.mode=disabled", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=(work / f"{label}.log").open("w"))
    metrics = json.loads((run_dir / "sft" / "metrics.json").read_text())
    return {k: metrics.get(k) for k in ("tokens_per_s", "timed_steps", "step_time_s", "gradient_checkpointing",
                                        "attn_implementation", "samples")}


def grpo(run: Path, init: Path, steps: int, overrides: list[str], work: Path, label: str) -> tuple[dict, list]:
    """`lwm rl`'s GRPO in process on its own run folder: the steady-state rate of its training
    part (each step less its rollout: generation and scoring), and the rollouts it trained on."""
    import contextlib
    from unittest import mock

    from accelerate.optimizer import AcceleratedOptimizer

    import rl.train
    from lwm.tracking import RunPaths
    run_dir = work / label
    run_dir.mkdir()
    (run_dir / "prepare").symlink_to((run / "prepare").resolve())
    cfg = compose(f"run_dir={run_dir}", f"rl.init={init}", f"rl.max_steps={steps}", "rl.save_every=1000000",
                  "rl.resume=never", *overrides)
    times, rollouts = {"step": [], "rollout": [], "optimizer": []}, []

    def timing(owner, attr, name, keep=False):
        def wrapped(*a, _orig=getattr(owner, attr), **k):
            t = time.perf_counter()
            out = _orig(*a, **k)
            times[name].append(time.perf_counter() - t)
            if keep:
                rollouts.append({key: out[key].detach().clone() for key in
                                 ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")})
            return out
        return mock.patch.object(owner, attr, wrapped)
    trainer = rl.train.Trainer
    with contextlib.ExitStack() as stack:
        stack.enter_context(timing(trainer, "training_step", "step"))
        stack.enter_context(timing(trainer, "_generate_and_score_completions", "rollout", keep=True))
        stack.enter_context(timing(AcceleratedOptimizer, "step", "optimizer"))
        metrics = rl.train.train(cfg, RunPaths(run_dir))
    if len(times["step"]) != len(times["rollout"]):
        raise SystemExit("bench_sft --rl: steps reused a generation; time an on-policy algorithm (rl.algorithm=grpo)")
    train_s = [s - r + o for s, r, o in zip(times["step"], times["rollout"], times["optimizer"])]
    tokens = [int(b["prompt_mask"].sum() + b["completion_mask"].sum()) for b in rollouts]
    return {"tokens_per_s": round(sum(tokens[1:]) / sum(train_s[1:]), 1), "timed_steps": len(train_s) - 1,
            "gradient_checkpointing": metrics.get("gradient_checkpointing"),
            "attn_implementation": metrics.get("attn_implementation")}, rollouts


def table(best: dict, repeats: int, cfg) -> None:
    base = best["bare per-sample loop"]["tokens_per_s"]
    print(f"\n| side | tokens/s (best of {repeats}) | x bare loop | attention | checkpointing |")
    print("|---|---|---|---|---|")
    for name, got in best.items():
        print(f"| {name} | {got['tokens_per_s']:,.0f} | {got['tokens_per_s'] / base:.2f} | "
              f"{got.get('attn_implementation') or cfg.model.attn_implementation} | "
              f"{got.get('gradient_checkpointing', False)} |")


def main_rl(args) -> None:
    """--rl: GRPO's training part against the bare loop on the rollouts of the same run."""
    cfg = compose(f"run_dir={args.run.resolve()}", *args.set)
    from lwm.tokenizer import load_tokenizer
    tok = load_tokenizer(args.run / "prepare" / "tokenizer")
    sides = {"lwm rl (training part)": args.set}
    if args.compare:
        sides["lwm rl, before (checkpointing)"] = [*args.set, "rl.gradient_checkpointing=true"]
    results: dict[str, list[dict]] = {"bare per-sample loop": [], **{name: [] for name in sides}}
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        work = Path(tmp)
        save_init(cfg, tok, work / "init")
        for r in range(args.repeats):
            for i, (name, overrides) in enumerate(sides.items()):
                got, rollouts = grpo(args.run, work / "init", args.rl_steps, overrides, work, f"rl{i}_r{r}")
                results[name].append(got)
                print(f"  repeat {r + 1}: {name}: {got['tokens_per_s']} tokens/s", flush=True)
                if i == 0:
                    got = bare(cfg, cfg.rl, rl_batches(rollouts), work / "init", router_loss=False)
                    results["bare per-sample loop"].append(got)
                    print(f"  repeat {r + 1}: bare per-sample loop, same rollouts: {got['tokens_per_s']} tokens/s",
                          flush=True)
    best = {name: max(rs, key=lambda g: g["tokens_per_s"] or 0) for name, rs in results.items()}
    table(best, args.repeats, cfg)
    if args.out:
        args.out.write_text(json.dumps({"mode": "rl", "results": results, "best": best}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a prepared run folder (runs/<name>)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare", action="store_true", help="also time the settings before issue 20")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for both sides (sft.*, model.*)")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    ap.add_argument("--rl", action="store_true", help="time GRPO's training part instead of SFT")
    ap.add_argument("--rl-steps", type=int, default=4, help="GRPO steps per run (the first is not timed)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.rl:
        return main_rl(args)
    cfg, tok, rows, stats = prepared(args.run, args.set)
    steps = -(-len(rows) // (cfg.sft.batch_size * cfg.sft.grad_accum))
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(f"{stats['samples']} samples, {tokens} tokens in {len(rows)} packed rows of <= {cfg.sft.max_length}: "
          f"{steps} steps of {cfg.sft.batch_size} x {cfg.sft.grad_accum} rows, torch threads "
          f"{__import__('torch').get_num_threads()}", flush=True)
    sides = {"bare per-sample loop": None, "lwm sft": args.set}
    if args.compare:
        sides["lwm sft, before (sdpa mask, checkpointing)"] = [*args.set, *BEFORE]
    results: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        work = Path(tmp)
        save_init(cfg, tok, work / "init")
        for r in range(args.repeats):
            for i, (name, overrides) in enumerate(sides.items()):
                got = (bare(cfg, cfg.sft, sft_batches(cfg, rows), work / "init", router_loss=True)
                       if overrides is None else lwm_sft(args.run, work / "init", steps, overrides, work, f"side{i}_r{r}"))
                results[name].append(got)
                print(f"  repeat {r + 1}: {name}: {got['tokens_per_s']} tokens/s", flush=True)
    best = {name: max(rs, key=lambda g: g["tokens_per_s"] or 0) for name, rs in results.items()}
    table(best, args.repeats, cfg)
    if args.out:
        args.out.write_text(json.dumps({"samples": stats["samples"], "tokens": tokens, "rows": len(rows),
                                        "steps": steps, "results": results, "best": best}, indent=2))


if __name__ == "__main__":
    main()
