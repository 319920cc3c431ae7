"""Induction: random tokens with a repeated segment.

A prompt is ``[BOS] p_0 .. p_{P-1} x_0 .. x_{L-1} x_0 .. x_{R-1}``: ``P``
filler tokens, a segment of ``L`` distinct random tokens, then the first ``R``
tokens of the segment again (``R < L``). The model should continue the repeat,
so the target is ``x_R``, the token that followed the first occurrence of the
last token. All tokens of a prompt are distinct except for the repeat.

Roles (token positions in the record's text, BOS prefix included):

- ``first_j``  (j = 0..L-1): first occurrence of segment token ``x_j``;
  ``first_R`` is where the target token first appeared.
- ``second_j`` (j = 0..R-1): its second occurrence.
- ``END``: the last position (= ``second_{R-1}``).

Tokens are words that encode to exactly one token with a leading space: by
default every such alphanumeric word in the tokenizer's vocabulary (for a toy
word-level vocabulary "t0".."t99" that is all of them), or an explicit
``pool`` of words.
"""

from __future__ import annotations

import random

from ..errors import InputError
from ..tokens import bos_text
from .records import PromptRecord, single_token, slot_positions


def token_pool(tokenizer, words=None) -> list[str]:
    """Words that are one token with a leading space (``' ' + w`` -> one id).

    Without ``words``: every ASCII alphanumeric word in the vocabulary, in id
    order (special tokens excluded). With ``words``: those words, checked; one
    that fails raises InputError."""
    if words is not None:
        words = [str(w) for w in words]
        bad = [
            w
            for w in words
            if not w.strip() or w != w.strip() or single_token(tokenizer, w) is None
        ]
        if bad:
            raise InputError(
                f"induction pool: {bad[:10]} do not encode to one token with a "
                "leading space for this tokenizer; pass words that do"
            )
        if len(set(words)) != len(words):
            raise InputError("induction pool: words repeat; pass each word once")
        return words
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i in range(len(tokenizer)):
        if i in special:
            continue
        w = tokenizer.decode([i]).strip()
        if w and w.isascii() and w.isalnum() and single_token(tokenizer, w) == i:
            out.append(w)
    return out


def induction(
    tokenizer,
    n: int,
    seed: int = 0,
    seg_len: int = 10,
    repeat_len: int | None = None,
    prefix_len: int = 0,
    bos: bool = True,
    pool=None,
) -> list[PromptRecord]:
    """``n`` induction prompts, deterministic in ``seed`` (see the module docstring).

    ``repeat_len`` defaults to ``seg_len - 1`` (the target is the segment's last
    token). ``pool``: explicit words to draw from (default: :func:`token_pool`)."""
    if not isinstance(n, int) or n < 1:
        raise InputError(f"induction: n={n!r} must be a positive integer")
    repeat_len = seg_len - 1 if repeat_len is None else repeat_len
    if seg_len < 2 or not 1 <= repeat_len < seg_len or prefix_len < 0:
        raise InputError(
            f"induction: need seg_len >= 2, 1 <= repeat_len < seg_len and "
            f"prefix_len >= 0 (got {seg_len}, {repeat_len}, {prefix_len})"
        )
    words = token_pool(tokenizer, pool)
    if len(words) < seg_len + prefix_len:
        raise InputError(
            f"induction: only {len(words)} single-token words for this "
            f"tokenizer, {seg_len + prefix_len} needed; lower seg_len/"
            "prefix_len or pass a larger pool"
        )
    bos_str = bos_text(tokenizer) if bos else ""
    rng = random.Random(f"induction:{seed}")
    template = f"induction_p{prefix_len}_l{seg_len}_r{repeat_len}"
    records, tries = [], 0
    while len(records) < n:
        tries += 1
        if tries > 20 * n + 100:
            raise InputError(
                "induction: the pool words do not stay single tokens when "
                "joined by spaces for this tokenizer; pass another pool"
            )
        drawn = rng.sample(words, prefix_len + seg_len)
        seg = drawn[prefix_len:]
        seq = drawn[:prefix_len] + seg + seg[:repeat_len]
        text, slots = bos_str, {}
        for j, w in enumerate(seq):
            text += " "
            k = j - prefix_len
            if k >= 0:
                role = f"first_{k}" if k < seg_len else f"second_{k - seg_len}"
                slots[role] = (len(text), len(text) + len(w))
            text += w
        ids, pos = slot_positions(tokenizer, text, slots)
        if pos is None:
            continue
        pos["END"] = len(ids) - 1
        meta = {
            "seed": seed,
            "bos": bool(bos_str),
            "seg_len": seg_len,
            "repeat_len": repeat_len,
            "prefix_len": prefix_len,
            "tokens": seq,
        }
        records.append(
            PromptRecord(
                task="induction",
                text=text,
                target=" " + seg[repeat_len],
                distractor=None,
                roles=pos,
                template=template,
                group=f"induction-{seed}-{len(records):05d}",
                condition="induction",
                metadata=meta,
            )
        )
    return records
