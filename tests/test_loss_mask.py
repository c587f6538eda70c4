"""The loss covers exactly the target observation; incremental rendering equals whole templating."""

import datasets

from lwm.tracking import RunPaths
import pytest
import torch

from lwm.tokenizer import EOS, IGNORE, encode_chat, encode_prompt, load_tokenizer


@pytest.fixture(scope="module")
def tok(prepared_run):
    return load_tokenizer(prepared_run / "prepare" / "tokenizer")


@pytest.fixture(scope="module")
def samples(prepared_run):
    return datasets.Dataset.from_parquet(RunPaths(prepared_run).shards("sft"))


def test_incremental_rendering_equals_whole_template(tok, samples):
    for rec in samples:
        messages = rec["prompt"] + rec["completion"]
        ids, _ = encode_chat(tok, messages)
        whole = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert ids == whole
        # The prompt as generation sees it is a prefix of the whole conversation.
        prompt = encode_prompt(tok, rec["prompt"])
        assert whole[:len(prompt)] == prompt


def test_labels_are_the_observation_only(tok, samples):
    for rec in samples:
        ids, labels = encode_chat(tok, rec["prompt"] + rec["completion"])
        trained = [i for i, l in zip(ids, labels) if l != IGNORE]
        assert tok.decode(trained) == rec["completion"][0]["content"] + EOS
        # Trained tokens are one contiguous span at the end (before the template's newline).
        first = next(i for i, l in enumerate(labels) if l != IGNORE)
        assert all(l != IGNORE for l in labels[first:-1])


def test_history_observations_trained_when_asked(tok, samples):
    rec = next(r for r in samples if len(r["prompt"]) > 3)
    messages = rec["prompt"] + rec["completion"]
    ids, labels = encode_chat(tok, messages, train_history=True)
    text = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
    expected = "".join(m["content"] + EOS for m in messages if m["role"] == "assistant")
    assert text == expected


def test_sft_trainer_batch_trains_exactly_the_observation(run_copy, tok):
    """Decode the labels of a real batch from TRL's SFTTrainer collator."""
    from trl import SFTConfig, SFTTrainer

    from lwm.models.hf import build_model
    from sft.train import tokenized_samples
    from tests.conftest import make_cfg

    cfg = make_cfg(run_copy)
    dataset, stats = tokenized_samples(tok, RunPaths(run_copy).shards("sft"), 2048, False)
    model = build_model(cfg.model, len(tok), tok)
    args = SFTConfig(output_dir=str(run_copy / "t"), per_device_train_batch_size=4, use_cpu=True,
                     report_to=[], max_length=2048, max_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    originals = datasets.Dataset.from_parquet(RunPaths(run_copy).shards("sft"))
    targets = {r["completion"][0]["content"] + EOS for r in originals}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = ids[labels != IGNORE]
        assert tok.decode(trained) in targets
        assert (labels[labels != IGNORE] == trained).all()
    assert batch["labels"].shape == batch["input_ids"].shape
    assert torch.all((batch["labels"] != IGNORE).sum(1) > 0)
