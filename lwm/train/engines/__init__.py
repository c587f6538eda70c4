"""Training engines: the parallel machinery behind the one loop (lwm.train.loop), by `backend.name`.

An engine is constructed with (cfg, job, paths) and then answers:

    setup(resume_from)         build model and optimizer; load a checkpoint, or the job's HF start
    step(micro_batches, lr)    one optimizer step over the step's micro-batches -> (loss, grad norm)
    eval_loss(ids, labels)     loss of one batch, no gradient (held-out loss)
    save(path) / export(final, last_checkpoint)
                               its checkpoint state into an empty folder (collective); the HF
                               safetensors checkpoint the later stages read
    meta() / check_resume(saved, path) / describe()
                               what a checkpoint records about the layout, and the refusal of a
                               checkpoint this layout cannot load
    name, dp, dp_rank          the backend's name; data-parallel size and this rank's place in it

Adding a backend: one module here with an Engine subclass, plus one line in ENGINES.
"""

from __future__ import annotations

import importlib
from pathlib import Path

ENGINES = {
    "hf": "lwm.train.engines.hf:HFEngine",                      # torch: one process, DDP, FSDP2
    "deepspeed": "lwm.train.engines.deepspeed:DeepSpeedEngine", # ZeRO 0-3, offload
    "megatron": "lwm.train.engines.megatron:MegatronEngine",    # megatron-core TP/PP/CP/EP
}


def get_engine(name: str):
    if name not in ENGINES:
        raise ValueError(f"backend.name = '{name}': expected one of {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


class Engine:
    name = "?"
    dp = 1
    dp_rank = 0

    def __init__(self, cfg, job, paths):
        self.cfg, self.job, self.paths = cfg, job, paths

    def meta(self) -> dict:
        return {"dp_size": self.dp}

    def check_resume(self, saved: dict, path: Path) -> None:
        """Refuse a checkpoint whose state this layout would load into the wrong slots."""

    def describe(self) -> str:
        return f"{self.name} dp {self.dp}"


def start_checkpoint(cfg, job, paths) -> Path:
    """The HF checkpoint a job starts from: its own, or a fresh model built from config (seeded by
    cfg.seed) and saved as the run's 'init' stage, so eval can score the untrained model. The fresh
    model is rebuilt when the model config, seed or tokenizer changed (recorded beside it). Rank 0
    writes it; every rank reads it."""
    if job.init:
        return Path(job.init)
    import json

    from omegaconf import OmegaConf

    from lwm.identity import digest
    from lwm.train import dist
    init = paths.model("init")
    made_by = digest({"model": OmegaConf.to_container(cfg.model, resolve=True), "seed": cfg.seed,
                      "tokenizer": job.tok.name_or_path, "vocab": len(job.tok)})
    record = init / "made_by.json"
    current = (init / "model.safetensors").exists() and record.exists() and \
        json.loads(record.read_text()).get("digest") == made_by
    if dist.is_main() and not current:
        import torch

        from lwm.models.hf import build_model
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, len(job.tok), job.tok)
        model.save_pretrained(init, safe_serialization=True)
        job.tok.save_pretrained(init)
        record.write_text(json.dumps({"digest": made_by}))
    dist.barrier()
    return init
