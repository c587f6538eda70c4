"""SFT packing never lets attention or loss cross samples; long samples lose old turns first."""

import datasets
import pytest

from lwm.tracking import RunPaths
import torch
from trl import SFTConfig, SFTTrainer

from lwm.models.hf import build_model
from lwm.tokenizer import EOS, IGNORE, load_tokenizer
from sft.train import fit_to_length, tokenized_samples
from tests.conftest import make_cfg


def _batch(tok, model, data, packing, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path / f"p{packing}"), per_device_train_batch_size=len(data),
                     use_cpu=True, report_to=[], max_length=4096, max_steps=1, packing=packing,
                     packing_strategy="bfd", padding_free=packing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    return next(iter(trainer.get_train_dataloader()))


def test_packed_loss_equals_unpacked(run_copy, tmp_path):
    tok = load_tokenizer(run_copy / "prepare" / "tokenizer")
    data, _ = tokenized_samples(tok, RunPaths(run_copy).shards("sft"), 4096, False)
    data = data.select(range(6))
    torch.manual_seed(0)
    model = build_model(make_cfg(run_copy).model, len(tok), tok).eval()
    padded, packed = _batch(tok, model, data, False, tmp_path), _batch(tok, model, data, True, tmp_path)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # really packed
    with torch.no_grad():
        loss_padded = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                            labels=padded["labels"], use_cache=False).loss
        loss_packed = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                            labels=packed["labels"], use_cache=False).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)


def test_truncation_drops_oldest_history_first(run_copy):
    tok = load_tokenizer(run_copy / "prepare" / "tokenizer")
    rows = datasets.Dataset.from_parquet(RunPaths(run_copy).shards("sft"))
    rec = max(rows, key=lambda r: len(r["prompt"]))
    messages = rec["prompt"] + rec["completion"]
    assert len(messages) >= 6  # system, >= 2 history turns, turn t, target
    full, _, dropped = fit_to_length(tok, messages, 10**6, False)
    assert dropped == 0
    ids, labels, dropped = fit_to_length(tok, messages, len(full) - 1, False)
    assert dropped >= 1 and len(ids) < len(full)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n" + messages[0]["content"])
    assert tok.decode([i for i, l in zip(ids, labels) if l != IGNORE]) == messages[-1]["content"] + EOS
    if "**Current State:**" in messages[1]["content"] and len(messages) >= 8:
        assert messages[1]["content"] in text  # the initial state survives
    assert fit_to_length(tok, messages, 10, False) is None


def test_eval_prompts_fit_the_model_by_dropping_old_turns(run_copy):
    from lwm.tokenizer import encode_prompt, fit_prompt
    tok = load_tokenizer(run_copy / "prepare" / "tokenizer")
    rows = datasets.Dataset.from_parquet(RunPaths(run_copy).shards("sft"))
    prompt = max(rows, key=lambda r: len(r["prompt"]))["prompt"]
    full = encode_prompt(tok, prompt)
    ids, dropped = fit_prompt(tok, prompt, len(full) - 1)
    assert dropped >= 1 and len(ids) < len(full)
    assert tok.decode(ids).endswith(prompt[-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n")
    assert fit_prompt(tok, prompt, len(full)) == (full, 0)
    ids, _ = fit_prompt(tok, prompt, 8)
    assert len(ids) == 8  # cannot fit even alone: cut from the left, generation header kept


def _packed_model(tmp_path, impl):
    torch.manual_seed(0)
    return build_model(make_cfg(tmp_path, f"model.attn_implementation={impl}").model, 512)


LENGTHS = [37, 5, 80, 1, 23]  # one sample of a single token: its attention is itself alone


def _loss_and_grads(model, **inputs):
    model.zero_grad()
    loss = model(**inputs, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sdpa_packed_attends_within_each_sample_only(tmp_path):
    """The packed row through sdpa_packed (boundaries from TRL's cu_seq_lens, or from the
    positions alone) trains exactly like each sample on its own, and like HF's dense masked sdpa."""
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (1, sum(LENGTHS)))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    labels = ids.clone()
    labels[positions == 0] = -100  # as TRL's padding-free collator does
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    packed = _packed_model(tmp_path, "sdpa_packed")
    want_loss, want = _loss_and_grads(_packed_model(tmp_path, "sdpa"), input_ids=ids, labels=labels,
                                      position_ids=positions)
    for extra in ({"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}, {}):
        loss, grads = _loss_and_grads(packed, input_ids=ids, labels=labels, position_ids=positions, **extra)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        for name, g in want.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # each sample alone: the mean over the trained tokens of all samples
    packed.zero_grad()
    total, count, start = 0.0, 0, 0
    for n in LENGTHS:
        x = ids[:, start:start + n]
        start += n
        if n > 1:
            total = total + packed(input_ids=x, labels=x, use_cache=False).loss * (n - 1)
            count += n - 1
    torch.testing.assert_close(total / count, want_loss, rtol=1e-5, atol=1e-6)


def test_sdpa_packed_keeps_padding_masks_and_generation(tmp_path):
    """A left-padded batch (RL's rollouts, eval's prompts) goes through HF's sdpa mask unchanged,
    and cached generation gives the same tokens."""
    torch.manual_seed(2)
    ids = torch.randint(3, 512, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    ids[0, :5] = 0
    models = [_packed_model(tmp_path, impl).eval() for impl in ("sdpa", "sdpa_packed")]
    with torch.no_grad():
        logits = [m(input_ids=ids, attention_mask=mask, use_cache=False).logits for m in models]
        torch.testing.assert_close(logits[1][mask.bool()], logits[0][mask.bool()], rtol=1e-5, atol=1e-5)
        out = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                          pad_token_id=0) for m in models]
    assert torch.equal(out[0], out[1])


def test_gradient_checkpointing_follows_the_model_size(tmp_path, monkeypatch):
    from lwm.train import trl
    cfg = make_cfg(tmp_path)
    model = _packed_model(tmp_path, "sdpa_packed")
    def resolved():
        return trl.uses_checkpointing(trl.gradient_checkpointing(cfg, cfg.sft, "sft"), cfg, model)
    assert trl.gradient_checkpointing(cfg, cfg.sft, "sft") is None  # auto: decided with the model
    assert resolved() is False  # tiny: activations are cheap
    monkeypatch.setattr(trl, "CHECKPOINTING_FROM", sum(p.numel() for p in model.parameters()))
    assert resolved() is True
    for value, want in (("false", False), ("true", True), (True, True)):
        cfg.sft.gradient_checkpointing = value
        assert resolved() is want
    cfg.sft.gradient_checkpointing = "sometimes"
    with pytest.raises(ValueError, match="sft.gradient_checkpointing = 'sometimes'"):
        trl.gradient_checkpointing(cfg, cfg.sft, "sft")
    cfg = make_cfg(tmp_path, "backend=deepspeed", "backend.deepspeed.activation_checkpointing=true",
                   "rl.gradient_checkpointing=false")
    with pytest.raises(ValueError, match="contradicts backend.deepspeed.activation_checkpointing"):
        trl.gradient_checkpointing(cfg, cfg.rl, "rl")
    cfg = make_cfg(tmp_path, "backend=megatron", "sft.gradient_checkpointing=true")
    with pytest.raises(ValueError, match="recompute_granularity"):
        trl.gradient_checkpointing(cfg, cfg.sft, "sft")
