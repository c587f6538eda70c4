"""Local batched generation with transformers: eval's local predictions and the model behind
`lwm serve` (and WorldModelEnv's local generator) call the same function."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Request:
    """One chat completion asked of a generation backend."""
    messages: list[dict]
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = None


def generate(model, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float) -> list[str]:
    return tok.batch_decode(generate_ids(model, tok, prompts, max_new_tokens, temperature),
                            skip_special_tokens=True)


@torch.no_grad()
def generate_ids(model, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float) -> list[list[int]]:
    """The new tokens of each prompt's continuation, up to and including its end-of-turn token."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature or None, top_p=None,
                         top_k=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    rows = []
    for row in out[:, width:].tolist():
        end = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        rows.append(row[:end])
    return rows
