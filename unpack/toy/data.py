"""Repeated-segment sequences and the word-level tokenizer of the toy models.

One sequence of ``seq_len`` tokens::

    <bos>  f .. f  a_1 .. a_n  f .. f  a_1 .. a_n  f .. f

a segment of ``n`` random words and the same segment again, with
``seq_len - 1 - 2n`` random filler words split at random before, between and
after. Every word is drawn uniformly with replacement, so only the repeated
segment is predictable: at the second occurrence of ``a_i`` the next word is
``a_{i+1}``, which sits right after the first occurrence (induction). ``n``
and the placement are drawn per sequence, so no positional offset solves the
task. A word may occur by chance elsewhere too; :meth:`Batch.unique_mask`
marks the positions where the earlier occurrence is the only one.

The text of a sequence is ``"<bos> t5 t17 t3 ..."``; the tokenizer splits on
whitespace only, so each word is one token and a target ``" t17"`` is one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BOS = "<bos>"
UNK = "<unk>"
N_SPECIAL = 2  # ids 0 and 1: <bos>, <unk>; token t{i} has id i + 2


def make_tokenizer(n_tokens: int):
    """A fast word-level tokenizer over ``<bos> <unk> t0 .. t{n_tokens-1}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS: 0, UNK: 1}
    vocab.update({f"t{i}": i + N_SPECIAL for i in range(n_tokens)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=BOS, eos_token=BOS, unk_token=UNK, model_max_length=1 << 30
    )


def word(i: int) -> str:
    """The word of token id ``i``."""
    return BOS if i == 0 else UNK if i == 1 else f"t{i - N_SPECIAL}"


def to_text(ids) -> str:
    """``"<bos> t5 t17 ..."`` for a sequence of token ids."""
    return " ".join(word(int(i)) for i in ids)


@dataclass
class Batch:
    """``ids [B, S]``; per sequence the segment length ``n [B]`` and where the first
    and second occurrences start, ``start1 [B]`` and ``start2 [B]``."""

    ids: torch.Tensor
    n: torch.Tensor
    start1: torch.Tensor
    start2: torch.Tensor

    def repeat_mask(self) -> torch.Tensor:
        """``[B, S]`` True at positions ``q`` whose next token is predictable by
        induction: ``start2 <= q <= start2 + n - 2``."""
        q = torch.arange(self.ids.shape[1])
        return (q >= self.start2[:, None]) & (q <= (self.start2 + self.n - 2)[:, None])

    def unique_mask(self) -> torch.Tensor:
        """``[B, S]`` the repeat positions (:meth:`repeat_mask`) whose word occurs
        exactly once before them, at its first occurrence: induction is unambiguous."""
        same = self.ids[:, :, None] == self.ids[:, None, :]  # [B, q, s]
        earlier = torch.ones_like(same[0]).tril(-1)
        return self.repeat_mask() & ((same & earlier).sum(-1) == 1)

    def first_mask(self) -> torch.Tensor:
        """``[B, S]`` True at the matching positions of the first occurrence,
        ``start1 <= q <= start1 + n - 2`` (next token unpredictable)."""
        q = torch.arange(self.ids.shape[1])
        return (q >= self.start1[:, None]) & (q <= (self.start1 + self.n - 2)[:, None])


def sample_batch(
    gen: torch.Generator,
    batch: int,
    seq_len: int,
    n_tokens: int,
    seg_min: int,
    seg_max: int,
    distinct: bool = False,
) -> Batch:
    """``batch`` fresh sequences, drawn with ``gen`` (deterministic by its seed).
    ``distinct``: words drawn without replacement (needs ``n_tokens >= seq_len``)."""
    assert (
        2 <= seg_min <= seg_max
        and 1 + 2 * seg_max <= seq_len
        and (not distinct or n_tokens >= seq_len)
    )
    B, S = batch, seq_len
    n = torch.randint(seg_min, seg_max + 1, (B,), generator=gen)
    free = S - 1 - 2 * n  # filler words, split into before / between / after
    r1 = (torch.rand(B, generator=gen) * (free + 1)).long()
    r2 = (torch.rand(B, generator=gen) * (free - r1 + 1)).long()
    start1 = 1 + r1
    start2 = start1 + n + r2
    if distinct:
        words = torch.rand(B, n_tokens, generator=gen).argsort(dim=1)[:, :S] + N_SPECIAL
    else:
        words = torch.randint(N_SPECIAL, N_SPECIAL + n_tokens, (B, S), generator=gen)
    p = torch.arange(S)[None, :].expand(B, -1)
    second = (p >= start2[:, None]) & (p < (start2 + n)[:, None])
    src = torch.where(
        second, p - (start2 - start1)[:, None], p
    )  # the copy reads the first occurrence
    ids = words.gather(1, src)
    ids[:, 0] = 0  # <bos>
    return Batch(ids, n, start1, start2)


def sample(cfg, gen: torch.Generator, batch: int) -> Batch:
    """:func:`sample_batch` with the data settings of a :class:`~unpack.toy.train.ToyConfig`."""
    return sample_batch(
        gen, batch, cfg.seq_len, cfg.n_tokens, cfg.seg_min, cfg.seg_max, cfg.distinct
    )
