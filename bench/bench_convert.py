"""Peak memory of the HF <-> Megatron checkpoint conversion that starts and ends a Megatron stage.

    python bench/bench_convert.py [--arch qwen3_5_moe] [--hidden 1024] [--layers 8] [--experts 64]

Builds a random HF checkpoint of the given shape in bfloat16, then runs, each in its own process:
- `imports_only`: a process that imports torch, transformers and Megatron (the floor);
- `load`: transformers' from_pretrained of that checkpoint (one copy in memory: the reference);
- `import`: `python -m lwm.models.megatron_ckpt import` (HF -> Megatron dist checkpoint);
- `export`: the same module's `export` (dist checkpoint -> HF safetensors shards);
and prints each one's peak RSS above the floor, in multiples of the checkpoint's size. The conversion reads a tensor at a
time and converts a layer at a time, so its peak should stay near one copy of the model.
On a machine without a GPU, Megatron runs through the tests' CPU shim (tests/helpers/megatron_site).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_mib(cmd: list[str], env: dict, every: float = 0.1) -> float:
    """Run cmd to completion; its largest RSS, sampled (a forked child's kernel high-water mark
    starts at its parent's, so the kernel's own count would include this process)."""
    import time

    import psutil
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(every)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    return peak / 2**20


def main() -> None:
    from lwm.models import FAMILIES
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="qwen3_5_moe", choices=list(FAMILIES))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--moe-intermediate", type=int, default=512)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from launch import CONFIG_DIR
    from lwm.config import register_configs
    from lwm.models.hf import build_model
    from lwm.tokenizer import train_tokenizer

    work = a.work or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer([f"step {i} of the bench corpus" for i in range(200)], 512, work / "tokenizer")
    overrides = [f"run_dir={work / 'run'}", "backend=megatron", "backend.dtype=bfloat16",
                 f"data.tokenizer={work / 'tokenizer'}", f"model.arch={a.arch}", f"model.hidden_size={a.hidden}",
                 f"model.num_layers={a.layers}", "model.num_heads=16", "model.num_kv_heads=4", "model.head_dim=64",
                 f"model.num_experts={a.experts}", f"model.moe_intermediate_size={a.moe_intermediate}",
                 "model.experts_per_token=4", "model.vocab_size=32768", "model.tie_word_embeddings=false",
                 # sizes of Qwen3.5's shared expert and linear attention: a family without them ignores them
                 f"model.shared_expert_intermediate_size={a.moe_intermediate}", "model.linear_num_key_heads=8",
                 "model.linear_num_value_heads=16", "model.linear_key_head_dim=64", "model.linear_value_head_dim=64"]
    from hydra import compose, initialize_config_dir
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=overrides)
    conf = work / "run.yaml"
    OmegaConf.save(cfg, conf, resolve=True)

    hf_dir = work / "hf"
    torch.manual_seed(0)
    build_model(cfg.model, len(tok), tok).to(torch.bfloat16).save_pretrained(hf_dir, max_shard_size="1GB")
    size_mib = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) / 2**20

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "helpers" / "megatron_site"), str(ROOT)]),
           "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    load = [sys.executable, "-c", "import sys, torch; from transformers import AutoModelForCausalLM; "
            "AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)", str(hf_dir)]
    module = [sys.executable, "-m", "lwm.models.megatron_ckpt"]
    dist, back = work / "dist", work / "hf_back"
    base = [sys.executable, "-c", "import torch, transformers, megatron.core.models.gpt, lwm.models.megatron_ckpt"]
    peaks = {"imports_only": _peak_rss_mib(base, env), "load": _peak_rss_mib(load, env),
             "import": _peak_rss_mib([*module, "import", str(conf), str(hf_dir), str(dist)], env),
             "export": _peak_rss_mib([*module, "export", str(conf), str(dist), str(back)], env)}
    print(json.dumps({"arch": a.arch, "checkpoint_mib": round(size_mib), **{f"{k}_peak_rss_mib": round(v)
                                                                           for k, v in peaks.items()}}))
    over = {k: (v - peaks["imports_only"]) / size_mib for k, v in peaks.items()}
    print(f"checkpoint {size_mib:.0f} MiB (bf16); peak RSS above a process that only imports the libraries "
          f"({peaks['imports_only']:.0f} MiB), in checkpoints: from_pretrained {over['load']:.2f}x, "
          f"import {over['import']:.2f}x, export {over['export']:.2f}x")


if __name__ == "__main__":
    main()
