"""The circuit of a toy model, read off its own attention (independent of Unpack).

- previous-token score of head ``(l, h)``: mean attention from position ``p`` to
  ``p - 1`` over all positions ``p >= 2`` of fresh sequences;
- induction score: mean attention from a position ``q`` of the repeated segment
  to the position right after the first occurrence of the word at ``q``
  (``q - gap + 1``, gap = distance between the two occurrences), over the
  positions whose next word is predictable.

A head is a previous-token head (layer 0) or an induction head (layer 1) when its
score reaches ``threshold``. When no head does (an untrained model), the set
holds the best-scoring head so that a report can still run and measure chance;
``found`` says which happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .data import Batch, sample


@torch.no_grad()
def attention(model, ids: torch.Tensor) -> torch.Tensor:
    """``[L, B, H, S, S]`` attention probabilities of the model on ``ids``."""
    out = model(ids, output_attentions=True)
    if out.attentions is None or out.attentions[0] is None:
        raise InputError(
            "the model returned no attention probabilities; load it with "
            "attn_implementation='eager'"
        )
    return torch.stack(out.attentions)


def head_scores(model, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev [L, H], induction [L, H])`` scores on the batch."""
    A = attention(model, b.ids)  # [L, B, H, S, S]
    S = b.ids.shape[1]
    p = torch.arange(2, S)
    prev = A[:, :, :, p, p - 1].mean(dim=(1, 3))
    bi, q = b.repeat_mask().nonzero(as_tuple=True)  # predictable positions
    src = q - (b.start2 - b.start1)[bi] + 1  # right after the first occurrence of the token at q
    ind = A[:, bi, :, q, src].mean(dim=0)  # [n_pos, L, H] -> [L, H]
    return prev, ind


def current_token_scores(model, b: Batch) -> torch.Tensor:
    """``[L, H]`` mean attention from each position ``p >= 2`` to ``p`` itself. A head
    near 1 passes on the token at its own position, which an induction head can read
    through Q (the token to match) and V (the token to copy); not part of
    :func:`identify`'s two kinds of head."""
    A = attention(model, b.ids)  # [L, B, H, S, S]
    p = torch.arange(2, b.ids.shape[1])
    return A[:, :, :, p, p].mean(dim=(1, 3))


@dataclass
class GroundTruth:
    prev_scores: list[list[float]]  # [L][H]
    induction_scores: list[list[float]]
    prev_heads: list[int]  # layer-0 heads
    induction_heads: list[int]  # layer-1 heads
    prev_found: bool
    induction_found: bool
    threshold: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def identify(model, cfg, n_seqs: int = 256, seed: int = 777, threshold: float = 0.4) -> GroundTruth:
    """Previous-token heads of layer 0 and induction heads of layer 1, on ``n_seqs``
    fresh sequences of the toy config ``cfg``."""
    b = sample(cfg, torch.Generator().manual_seed(seed), n_seqs)
    model.eval()
    prev, ind = head_scores(model, b)

    def pick(scores: torch.Tensor) -> tuple[list[int], bool]:
        heads = (scores >= threshold).nonzero().flatten().tolist()
        return (heads, True) if heads else ([int(scores.argmax())], False)

    prev_heads, pf = pick(prev[0])
    ind_heads, inf = pick(ind[1])
    r = lambda t: [[round(float(x), 4) for x in row] for row in t]  # noqa: E731
    return GroundTruth(r(prev), r(ind), prev_heads, ind_heads, pf, inf, threshold)


def format_ground_truth(gt: GroundTruth) -> str:
    """The scores of every head and the heads picked, as printed by the CLI."""
    lines = ["head scores (attention to p-1 | to the token after the earlier occurrence):"]
    for L, (pr, ir) in enumerate(zip(gt.prev_scores, gt.induction_scores)):
        cells = "  ".join(f"h{h} {a:.2f}|{b:.2f}" for h, (a, b) in enumerate(zip(pr, ir)))
        lines.append(f"  layer {L}: {cells}")

    def say(kind, heads, found, layer):
        names = ", ".join(f"attn_{layer}_head_{h}" for h in heads)
        return (
            f"  {kind}: {names}"
            if found
            else f"  {kind}: none reaches {gt.threshold:.2f} (best: {names})"
        )

    lines.append(say("previous-token heads", gt.prev_heads, gt.prev_found, 0))
    lines.append(say("induction heads", gt.induction_heads, gt.induction_found, 1))
    return "\n".join(lines)
