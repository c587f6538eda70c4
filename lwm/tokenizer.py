"""Tokenizer: train a byte-level BPE with a ChatML template, and render chats into ids + labels.

The loss mask is built here, where the text is rendered: a conversation is encoded message by
message, and only the target observation (and, when asked, earlier observations) is labelled.
A test checks that this incremental encoding equals templating the whole conversation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
IGNORE = -100

# ChatML. {% generation %} marks assistant tokens so TRL's assistant masks work with it too.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, saved as a transformers tokenizer in out_dir."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token=EOS, pad_token=PAD, unk_token=None,
        additional_special_tokens=[BOS], clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1 << 20
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.chat_template is None:
        raise ValueError(f"tokenizer at {path} has no chat template; a ChatML template is expected")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _segment(tok, messages: list[dict], i: int) -> str:
    """Text that message i adds to the templated conversation (prefix differencing, so any
    chat template works as long as it is append-only)."""
    before = tok.apply_chat_template(messages[:i], tokenize=False) if i else ""
    after = tok.apply_chat_template(messages[: i + 1], tokenize=False)
    if not after.startswith(before):
        raise ValueError("the chat template is not append-only; incremental rendering is unsafe")
    return after[len(before):]


def encode_chat(tok, messages: list[dict], train_history: bool = False,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation whose last message is the assistant target.

    Labels are IGNORE except on the target's content and end-of-turn token (and on earlier
    assistant messages when train_history). The role header of a message is never trained.
    """
    ids: list[int] = []
    labels: list[int] = []
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        text = _segment(tok, messages, i)
        trained = msg["role"] == "assistant" and (i == last or train_history)
        if trained:
            header = f"{BOS}assistant\n"
            if not text.startswith(header):
                raise ValueError("expected a ChatML assistant header in the chat template")
            head_ids = tok.encode(header, add_special_tokens=False)
            body_ids = tok.encode(text[len(header):], add_special_tokens=False)
            body_labels = list(body_ids)
            # The newline after <|im_end|> belongs to the template, not to the observation.
            if text.endswith(EOS + "\n") and body_ids and tok.decode(body_ids[-1:]) == "\n":
                body_labels[-1] = IGNORE
            ids += head_ids + body_ids
            labels += [IGNORE] * len(head_ids) + body_labels
        else:
            seg = tok.encode(text, add_special_tokens=False)
            ids += seg
            labels += [IGNORE] * len(seg)
    if add_generation_prompt:
        gen = tok.encode(f"{BOS}assistant\n", add_special_tokens=False)
        ids += gen
        labels += [IGNORE] * len(gen)
    return ids, labels


def encode_prompt(tok, messages: list[dict]) -> list[int]:
    """Prompt ids ending with the assistant header, as generation sees them."""
    return tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                   return_dict=False)


def drop_oldest_turn(messages: list[dict], tail: int) -> list[dict] | None:
    """The conversation without its oldest history turn (a user/assistant pair after the
    system prompt), or None when none is left. `tail` messages at the end are never dropped
    (the current action, and the target when there is one). Turn 1, which carries the initial
    state, goes last."""
    history = messages[1:len(messages) - tail]
    if len(history) < 2:
        return None
    start = 3 if len(history) >= 4 and "**Current State:**" in history[0]["content"] else 1
    return messages[:start] + messages[start + 2:]


def fit_prompt(tok, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
    """Prompt ids within max_tokens, dropping the oldest history turns first; returns the ids
    and how many turns went. A prompt that cannot fit keeps its system prompt and current turn,
    cut from the left."""
    dropped = 0
    while True:
        ids = encode_prompt(tok, messages)
        if len(ids) <= max_tokens:
            return ids, dropped
        shorter = drop_oldest_turn(messages, tail=1)
        if shorter is None:
            return ids[-max_tokens:], dropped
        messages, dropped = shorter, dropped + 1
