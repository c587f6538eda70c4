"""`sdpa_packed`: PyTorch's scaled-dot-product attention, one packed sample at a time.

Padding-free packing (SFT's rows: several samples end to end, positions restarting at each)
needs attention that stays inside each sample. HF's `sdpa` does it with a dense block-diagonal
[N, N] mask over the whole packed row, which pays N² and keeps sdpa off its fused causal
kernels; here each sample is attended on its own with `is_causal`, paying the sum of the
samples' squares. On a GPU with flash-attn installed, `model.attn_implementation=
flash_attention_2` runs the same packed rows through its varlen kernels instead.

Everything else is plain `sdpa`: a batch with a padding mask goes through HF's sdpa mask and
kernel, and a row without packing (or a decode step against a cache) is one causal call.

Sample boundaries come from the collator's `cu_seq_lens_q` (TRL's padding-free collator writes
it) or else from `position_ids`, where a position that does not follow the previous one starts
a sample (the rule HF's own packed-sequence detection uses).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_packed"


def _mask(*, attention_mask=None, **kwargs):
    """No mask to build without padding: the attention below keeps packed samples apart itself.
    With a padding mask, HF's sdpa mask. (Our model families use no extra mask functions, the
    only other case in which HF builds a mask without padding.)"""
    if attention_mask is None:
        return None
    return sdpa_mask(attention_mask=attention_mask, **kwargs)


_last: list = [None, -1, None]  # (tensor, its version, rows): every layer of a forward gets the same tensor


def _boundaries(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> list[list[int]] | None:
    """Per batch row, the start offsets of its samples followed by the row length; None when no
    row holds more than one sample. Read from the device once per forward, not once per layer."""
    length = query.shape[2]
    if key.shape[2] != length:
        return None  # queries against a longer cache: not a packed training row
    cu = kwargs.get("cu_seq_lens_q") if query.shape[0] == 1 else None
    source = cu if cu is not None else kwargs.get("position_ids")
    if source is None:
        return None
    if source is _last[0] and source._version == _last[1]:
        rows = _last[2]
    else:
        rows = _read_boundaries(source, cu is not None, query.shape[0], length)
        _last[:] = [source, source._version, rows]
    if rows is not None and any(row[-1] != length or row[0] != 0 for row in rows):
        raise ValueError(f"{NAME}: sample boundaries {rows} do not cover the packed row of {length} tokens")
    return rows


def _read_boundaries(source: torch.Tensor, cumulative: bool, batch: int, length: int) -> list[list[int]] | None:
    if cumulative:
        rows = [[int(x) for x in source.tolist()]]
    else:
        if source.shape[-1] != length:
            return None
        positions = source.reshape(-1, length).expand(batch, -1)
        starts = (positions[:, 1:] != positions[:, :-1] + 1).nonzero().tolist()
        if not starts:
            return None
        rows = [[0] for _ in range(batch)]
        for r, i in starts:
            rows[r].append(i + 1)
        rows = [row + [length] for row in rows]
    return None if all(len(row) <= 2 for row in rows) else rows


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """HF attention-interface signature: query/key/value [B, heads, N, D]; returns [B, N, heads, D]."""
    kwargs.pop("is_causal", None)
    rows = None if attention_mask is not None else _boundaries(query, key, kwargs)
    if rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    outputs = []
    for b, row in enumerate(rows):
        pieces = [sdpa_attention_forward(module, query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                         value[b:b + 1, :, s:e], None, dropout=dropout, scaling=scaling,
                                         is_causal=True)[0]
                  for s, e in zip(row[:-1], row[1:]) if e > s]
        outputs.append(torch.cat(pieces, dim=1))
    return torch.cat(outputs, dim=0), None


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, _mask)
