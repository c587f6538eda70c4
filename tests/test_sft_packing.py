"""SFT packing never lets attention or loss cross samples; long samples lose old turns first."""

import datasets

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
