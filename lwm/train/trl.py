"""TRL's trainers (SFT, GRPO) driven by our config: TrainingArguments from the stage's typed config,
with the one optimizer and schedule (lwm.train.optim) and the backend (hf: the Trainer's DDP
under torchrun; deepspeed: a config generated from ours), plus the checks that the Trainer runs
what was asked, exact resume (every weight, the newest complete checkpoint, run state the
Trainer does not keep) and the final save.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from transformers import TrainerCallback

from lwm.tracking import write_metrics
from lwm.train import dist
from lwm.train.optim import spec, trl_optim_args

log = logging.getLogger("lwm.train")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def trainer_args(cfg, tcfg, out: Path, **extra) -> dict:
    """TrainingArguments shared by the TRL stages, from our typed config."""
    return dict(
        output_dir=str(out / "checkpoints"), max_steps=tcfg.max_steps,
        per_device_train_batch_size=tcfg.batch_size, gradient_accumulation_steps=tcfg.grad_accum,
        **trl_optim_args(spec(tcfg)),
        logging_steps=tcfg.log_every, save_steps=tcfg.save_every, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=not _cuda(),
        bf16=cfg.backend.dtype == "bfloat16", report_to=[] if cfg.wandb.mode == "disabled" else ["wandb"],
        run_name=f"{cfg.run_name}-{out.name}", disable_tqdm=False, dataloader_num_workers=0,
        **extra)


def backend_args(cfg, tcfg, world: int, stage: str) -> dict:
    """The TrainingArguments that pick the backend of a TRL stage: hf (the Trainer's DDP under
    torchrun) or DeepSpeed with a config generated from ours. backend=megatron trains SFT through
    the one loop instead (sft/train.py); GRPO has no Megatron path."""
    b = cfg.backend
    if b.name == "megatron":
        raise NotImplementedError(f"backend=megatron is not implemented for `lwm {stage}`: use "
                                  f"backend=deepspeed (ZeRO 0-3) or backend=hf for {stage}")
    if b.name == "hf":
        if b.strategy != "ddp":
            # The Trainer's FSDP on CPU silently falls back to DDP (STACK.md): refuse it by name.
            raise NotImplementedError(f"{stage} with backend=hf trains DDP only, not backend.strategy="
                                      f"{b.strategy}; shard with backend=deepspeed backend.deepspeed.zero_stage=3")
        return {}
    if b.name != "deepspeed":
        raise ValueError(f"backend.name = '{b.name}': expected hf, deepspeed or megatron")
    d = b.deepspeed
    if d.zero_stage == 3 and not d.stage3_gather_16bit_weights_on_model_save:
        # Without the gather, Trainer.save_model writes a placeholder model and only warns.
        raise ValueError(f"{stage} with backend.deepspeed.zero_stage=3 needs "
                         "backend.deepspeed.stage3_gather_16bit_weights_on_model_save=true")
    from lwm.train.engines.deepspeed import ds_config
    # No "optimizer"/"scheduler" in the DeepSpeed config: the Trainer builds both from the
    # arguments above, the same as backend=hf, and DeepSpeed shards that optimizer.
    ds = ds_config(b, tcfg, world)
    # DeepSpeed needs a process group even for one rank; without torchrun it would look for MPI.
    dist.init(always=True)
    # deepspeed.comm must know the world before any model is built under ZeRO-3 (GRPO's reference
    # model is, via zero.Init): left to the Trainer, it counts world 1 there and the batch check fails.
    import deepspeed
    deepspeed.init_distributed(dist_backend="nccl" if _cuda() else "gloo")
    return {"deepspeed": ds}


CHECKPOINTING_FROM = 1_000_000_000  # parameters from which auto recomputes activations


def gradient_checkpointing(cfg, tcfg, stage: str) -> bool | None:
    """<stage>.gradient_checkpointing checked against the backend before any work: True or False
    as set, None for auto (`uses_checkpointing` decides once the model is loaded)."""
    value = str(tcfg.gradient_checkpointing).lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"{stage}.gradient_checkpointing = {tcfg.gradient_checkpointing!r}: expected auto, true or false")
    if value != "auto" and cfg.backend.name == "megatron":
        raise ValueError(f"{stage}.gradient_checkpointing={value} applies to backend=hf and deepspeed; Megatron "
                         "recomputes activations with backend.megatron.recompute_granularity")
    if value == "false" and cfg.backend.name == "deepspeed" and cfg.backend.deepspeed.activation_checkpointing:
        raise ValueError(f"{stage}.gradient_checkpointing=false contradicts backend.deepspeed.activation_checkpointing="
                         "true: set one of them the other way")
    return None if value == "auto" else value == "true"


def uses_checkpointing(choice: bool | None, cfg, model) -> bool:
    """The checked choice resolved for this model: auto recomputes activations in the backward
    pass (less activation memory for about a third more compute) from CHECKPOINTING_FROM
    parameters, where activations rather than weights bound the batch, and whenever
    backend.deepspeed.activation_checkpointing asks for it."""
    if choice is not None:
        return choice
    deepspeed = cfg.backend.name == "deepspeed" and cfg.backend.deepspeed.activation_checkpointing
    return bool(deepspeed) or sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_FROM


def trained_with(trainer) -> dict:
    """How the Trainer's model actually trained (read from the model, not from our settings)."""
    model = trainer.model
    return {"gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
            "attn_implementation": model.config._attn_implementation}


class StepTimer(TrainerCallback):
    """A Trainer callback timing the steady state: the wall time and tokens between the end of
    the first step (compilation, allocator warm-up, first batch) and the end of the last, so a
    short run's rate is not its start-up's. Tokens are the Trainer's num_input_tokens_seen
    (with include_num_input_tokens_seen set)."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def summary(self) -> dict:
        """step_time_s (mean over the timed steps) and tokens_per_s; empty under two steps."""
        if len(self.marks) < 2:
            return {}
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        steps = len(self.marks) - 1
        return {"timed_steps": steps, "step_time_s": round((t1 - t0) / steps, 4),
                "tokens_per_s": round((n1 - n0) / (t1 - t0), 1) if n1 > n0 else None}


def check_world(trainer, world: int, backend: str, stage: str) -> None:
    """The Trainer can silently run as world 1 while torchrun started several ranks (each then
    trains its own replica): refuse that."""
    got = trainer.args.world_size
    if got != world:
        raise RuntimeError(f"{stage}: the Trainer sees world size {got}, torchrun started WORLD_SIZE={world}; "
                           "the ranks would train unsynchronised replicas")
    if backend == "deepspeed" and not trainer.is_deepspeed_enabled:
        raise RuntimeError(f"{stage}: backend=deepspeed but the Trainer did not enable DeepSpeed")


# What the Trainer's _save_checkpoint writes, in order: the weights (save_model), the optimizer
# and scheduler (DeepSpeed: its engine checkpoint, `latest` last), the RNG states, and
# trainer_state.json last: a folder without a readable one was cut short.
TRAINER_STATE, CARRIED = "trainer_state.json", "lwm_state.json"


def checkpoint_gaps(folder: Path) -> list[str]:
    """What a Trainer checkpoint-N folder lacks to be resumed exactly; [] for a complete one."""
    gaps = []
    try:
        state = json.loads((folder / TRAINER_STATE).read_text())
        m = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if m and state.get("global_step") != int(m.group(1)):
            gaps.append(f"{TRAINER_STATE} is at step {state.get('global_step')}")
    except (OSError, ValueError) as e:
        gaps.append(f"{TRAINER_STATE} ({'missing' if isinstance(e, FileNotFoundError) else 'unreadable'})")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            shards = {index.name}
        gaps += sorted(f for f in shards if not (folder / f).is_file())
    elif not (folder / "model.safetensors").is_file():
        gaps.append("model.safetensors")
    if (folder / "latest").exists() or any(folder.glob("global_step*")):  # a DeepSpeed checkpoint
        tag = (folder / "latest").read_text().strip() if (folder / "latest").exists() else ""
        if not tag or not any((folder / tag).glob("*model_states.pt")):
            gaps.append(f"the DeepSpeed engine checkpoint ({'latest -> ' + tag if tag else 'latest'})")
    elif not (folder / "optimizer.pt").is_file():
        gaps.append("optimizer.pt")
    if not (folder / "scheduler.pt").is_file():  # DeepSpeed too: the Trainer's schedule, not DeepSpeed's
        gaps.append("scheduler.pt")
    if not any(folder.glob("rng_state*.pth")):
        gaps.append("rng_state.pth")
    return gaps


def resume_arg(resume: str, ckpt_dir: Path) -> str | None:
    """Our resume setting as the Trainer's: auto resumes the newest complete checkpoint-N, if
    any. A folder a kill cut short (checkpoint_gaps) is passed over and named in the log; the
    Trainer writes it again when it reaches that step."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"resume={resume}: no such checkpoint folder; pass a checkpoint-N folder of "
                                    f"{ckpt_dir}, auto or never")
        if gaps := checkpoint_gaps(path):
            raise ValueError(f"resume={resume}: incomplete checkpoint (a kill during its save?), it lacks "
                             f"{', '.join(gaps)}; pass another checkpoint-N folder of {ckpt_dir}, auto or never")
        return str(path)
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    for folder in sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        gaps = checkpoint_gaps(folder)
        if not gaps:
            return str(folder)
        log.warning("resume: skipping %s, cut short (lacks %s)", folder, ", ".join(gaps))
    if found:
        log.warning("resume: no complete checkpoint in %s; training from the start", ckpt_dir)
    return None


def carried(checkpoint: str | None) -> dict:
    """The run state ExactResume.carried_state saved in `checkpoint` ({} when not resuming)."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint) / CARRIED
    if not path.exists():
        raise FileNotFoundError(f"resume: {path} is missing (the checkpoint was written by an older version): "
                                "the run's totals cannot be carried on; start over with <stage>.resume=never")
    return json.loads(path.read_text())


def load_weights(model, folder: Path) -> None:
    """Every weight of the HF checkpoint in `folder` into `model`, or an error naming the file.
    from_pretrained applies the checkpoint conversions (per-expert tensors on disk, fused in the
    model), and the copy into `model` is strict. Holds a second copy of the model meanwhile."""
    weights = folder / ("model.safetensors" if (folder / "model.safetensors").exists()
                        else "model.safetensors.index.json")
    try:
        loaded, info = type(model).from_pretrained(str(folder), dtype=model.dtype, use_safetensors=True,
                                                   output_loading_info=True)
        bad = {k: sorted(v) for k, v in info.items() if v}
        if bad:
            raise ValueError(f"the weights do not match the model: {bad}")
        model.load_state_dict(loaded.state_dict(), strict=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"resume: cannot load every weight of {weights}: {e}") from e
    log.info("resume: loaded every weight of %s", weights)


class ExactResume:
    """Mixin for a TRL trainer (`class T(ExactResume, SFTTrainer)`) that resumes exactly.

    The Trainer loads an HF checkpoint with load_state_dict(strict=False) (transformers
    Trainer._load_from_checkpoint): keys that save_pretrained wrote in the checkpoint layout (an
    MoE's per-expert tensors, fused in the model) are dropped with a warning, and those weights
    silently stay the run's starting ones. Here every weight is loaded, or the resume fails.
    Resumed at max_steps, it trains no further step.

    `carried_state`, if set, returns run state the Trainer does not keep (every rank calls it,
    so it may be a collective); rank 0 writes it into each checkpoint before trainer_state.json,
    so a complete checkpoint always holds it (read back with `carried`)."""

    carried_state = None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or model is not None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights(self.model, Path(resume_from_checkpoint))

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the last step's checkpoint (a kill during the final writes), the Trainer
        # would train one step past max_steps before checking it: there is nothing left to run.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        if self.carried_state is not None:
            state = self.carried_state()
            if self.args.should_save:
                folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                write_metrics(folder / CARRIED, state)
        super()._save_checkpoint(model, trial)


def save_final(trainer, tok, final: Path) -> None:
    """The final weights and tokenizer; the `complete` marker comes after metrics.json
    (mark_complete). Every rank calls this (ZeRO-3 gathers the weights collectively); rank 0 writes."""
    trainer.model.config.output_router_logits = False
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tok.save_pretrained(final)


def mark_complete(final: Path) -> None:
    """Last of a stage's writes (final/ weights, metrics.json, then this): a rerun finding no
    marker trains on from the last checkpoint and writes all three again."""
    (final / "complete").touch()
