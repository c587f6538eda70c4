"""Turn types for CPT loss masking: how much of an observation is worth learning.

For each (action, observation) pair we measure how the observation relates to the action and to
the state before it: word-set overlap with the action, novelty against the action and the
previous observation, Jaccard similarity, length ratio, and whether one's word sequence appears
verbatim in the other's. A turn is then classified; the
fraction of its observation tokens kept in the CPT loss depends on the class (the recipe keeps
retrieval/expansion/action in full, transforms at half, boilerplate at 10% and echoes at 5%).
Masked tokens stay in the context; they only stop being predicted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z0-9_]+")

KEEP = {"retrieval": 1.0, "expansion": 1.0, "action": 1.0, "transform": 0.5,
        "boilerplate": 0.1, "echo": 0.05, "other": 1.0}


@dataclass(frozen=True)
class TurnStats:
    overlap: float       # share of the observation's words that the action contains
    novelty: float       # share of the observation's words seen neither in the action nor before
    jaccard: float       # |action ∩ observation| / |action ∪ observation| (word sets)
    length_ratio: float  # observation words / action words
    verbatim: bool = False  # one's word sequence appears unchanged inside the other's


def words(text: str) -> set[str]:
    return set(_lowered(text))


def _lowered(text: str) -> list[str]:
    """The text's words, lower-cased. On ASCII text lowering first gives the same words in one
    pass; elsewhere it may not (the Kelvin sign lowers to an ASCII k the pattern would match)."""
    if text.isascii():
        return _WORD.findall(text.lower())
    return [w.lower() for w in _WORD.findall(text)]


def turn_stats(action: str, observation: str, previous: str = "") -> TurnStats:
    return _stats(_lowered(action), _lowered(observation), words(previous))


def _stats(seq_a: list[str], seq_o: list[str], p: set[str]) -> TurnStats:
    """turn_stats of an action's and an observation's lower-cased words, and the previous
    observation's word set."""
    a, o = set(seq_a), set(seq_o)
    n_a = max(len(seq_a), 1)
    n_o = len(seq_o)
    if not o:
        return TurnStats(0.0, 0.0, 0.0, n_o / n_a)
    sa, so = " ".join(seq_a), " ".join(seq_o)
    verbatim = bool(sa and so) and (f" {so} " in f" {sa} " or f" {sa} " in f" {so} ")
    return TurnStats(overlap=len(o & a) / len(o), novelty=len(o - a - p) / len(o),
                     jaccard=len(o & a) / len(o | a), length_ratio=n_o / n_a, verbatim=verbatim)


def turn_kinds(initial_observation: str, steps) -> list[str]:
    """classify(turn_stats(action, observation, previous observation)) of every step, each
    observation's words found once (it is the next turn's previous observation too)."""
    kinds, previous = [], words(initial_observation)
    for step in steps:
        seq_o = _lowered(step.observation)
        kinds.append(classify(_stats(_lowered(step.action), seq_o, previous)))
        previous = set(seq_o)
    return kinds


def classify(s: TurnStats) -> str:
    """One of retrieval, expansion, action, transform, boilerplate, echo, other."""
    if s.length_ratio == 0 or (s.novelty < 0.05 and s.overlap < 0.2):
        return "boilerplate"             # nothing new: an acknowledgement or an unchanged state
    if s.verbatim and s.overlap >= 0.8 and s.length_ratio <= 2:
        return "echo"                    # the observation repeats the action
    if s.overlap >= 0.5 and s.length_ratio <= 4:
        return "transform"               # the action's content, reshaped
    if s.novelty >= 0.5 and s.length_ratio >= 5:
        return "retrieval"               # much new content pulled from the environment
    if s.novelty >= 0.3 and s.length_ratio >= 2:
        return "expansion"               # the action's subject, elaborated
    if s.novelty >= 0.3:
        return "action"                  # a short, new effect of acting
    return "other"


def token_keep_mask(n_tokens: int, fraction: float, key: str) -> list[int]:
    """A deterministic pseudo-random choice of round(fraction * n) tokens to keep (1) in the
    loss, spread over the whole observation rather than a prefix."""
    if fraction >= 1.0:
        return [1] * n_tokens
    keep = round(fraction * n_tokens)
    ranked = sorted(range(n_tokens), key=lambda i: hashlib.blake2b(
        f"{key}:{i}".encode(), digest_size=8).digest())
    chosen = set(ranked[:keep])
    return [int(i in chosen) for i in range(n_tokens)]
