"""The field's attribution baselines on the project's own forward pass
(:mod:`unpack.baselines.forward`), batched over right-padded prompts. The
metric is Unpack's: the target/distractor logit difference at the last position
(docs/METHOD.md §3; ``target − mean logit`` without a distractor).

Edge methods (scores per edge ``writer -> (reader, mode)`` of the store's graph):

- ``eap`` (edge attribution patching, Syed et al. 2023):
  ``(out_c(clean) − out_c(corrupt)) · ∂metric/∂x_r`` at the clean input, summed
  over positions: the first-order estimate of how much the metric falls when
  that one edge is patched with the corrupted prompt's value (positive: the edge
  supports the target, as Unpack's credit does).
- ``eap_ig`` (Hanna et al. 2024): the same difference times the gradient at the
  reader's input averaged over ``steps`` points on the straight line from the
  corrupted to the clean token embeddings (midpoints ``(j + ½)/steps``).

Token methods (one score per token position):

- ``ig`` (integrated gradients, Sundararajan et al. 2017) on the token
  embeddings: ``(e − e') · mean_α ∂metric/∂e(e' + α(e − e'))`` summed over ``D``,
  ``steps`` midpoints, the baseline ``e'`` ``zero``, ``pad`` (the pad token's
  embedding everywhere) or ``mean`` (the mean embedding of the vocabulary).
  Completeness: the scores add up to ``metric(e) − metric(e')`` as steps grow.
- ``grad_x_input``: ``e · ∂metric/∂e`` summed over ``D``.
- ``rollout`` (attention rollout, Abnar & Zuidema 2020): per layer
  ``Â = ½ mean_h A + ½ I``, rows renormalized, ``R = Â_{L−1} ⋯ Â_0``; the score
  of position ``s`` is ``R[t, s]`` (each row of ``R`` sums to 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters.base import ModelSpec
from ..capture import capture
from .forward import embed, run

Tensor = torch.Tensor

EDGE_METHODS = ("eap", "eap_ig")
TOKEN_METHODS = ("ig", "grad_x_input", "rollout")
METHODS = ("unpack",) + EDGE_METHODS + TOKEN_METHODS
IG_BASELINES = ("zero", "pad", "mean")


@dataclass
class EdgeScores:
    """Per prompt: ``attn[L] [B, H, 3, C_L]`` (modes Q, K, V), ``mlp[L] [B, C]``,
    ``logits [B, N]`` (writer -> logits at t), ``tokens [B, S]`` (the embedding's
    part per position), ``clean``/``corrupt`` metric ``[B]``, ``logits_t [B, V]``."""

    attn: list
    mlp: list
    logits: Tensor
    tokens: Tensor
    clean: Tensor
    corrupt: Tensor
    logits_t: Tensor


def _grads(spec, emb, lengths, tid, did):
    """``(pass, grads)``: a split pass at ``emb`` and the gradient of Σ metric at
    every reader input and at the embeddings (attn list, mlp list, final, emb)."""
    emb = emb.detach().requires_grad_(True)
    p = run(spec, emb, lengths, tid, did, keep=True, split=True)
    ins = p.inputs["attn"] + p.inputs["mlp"] + [p.inputs["final"], emb]
    g = torch.autograd.grad(p.metric.sum(), ins)
    L = spec.n_layers
    return p, (list(g[:L]), list(g[L : 2 * L]), g[2 * L], g[2 * L + 1])


def _edge_scores(spec, diff: Tensor, emb_diff: Tensor, grads, t: Tensor) -> tuple:
    """Edge scores ``diff · grad`` summed over positions and ``D``; ``diff [B, N, S, D]``
    the writers' change, ``t [B]`` the target positions."""
    g_attn, g_mlp, g_final, g_emb = grads
    attn = [
        torch.einsum("bhmsD,bcsD->bhmc", g, diff[:, : 0 + _n_attn(spec, L)])
        for L, g in enumerate(g_attn)
    ]
    mlp = [torch.einsum("bsD,bcsD->bc", g, diff[:, : _n_mlp(spec, L)]) for L, g in enumerate(g_mlp)]
    ar = torch.arange(diff.shape[0], device=diff.device)
    logits = torch.einsum("bD,bcD->bc", g_final[ar, t], diff[ar, :, t])
    tokens = (emb_diff * g_emb).sum(-1)
    return attn, mlp, logits, tokens


def _n_attn(spec, L: int) -> int:
    return (2 if spec.W_pos is not None else 1) + L * (spec.n_heads + 1)


def _n_mlp(spec, L: int) -> int:
    return _n_attn(spec, L) + (0 if spec.parallel else spec.n_heads)


def eap(
    spec: ModelSpec,
    ids: Tensor,
    corrupt_ids: Tensor,
    lengths: Tensor,
    tid: Tensor,
    did: Tensor,
    dtype=torch.float32,
    steps: int = 0,
) -> EdgeScores:
    """EAP (``steps = 0``) or EAP-IG with ``steps`` points (module docstring).
    ``corrupt_ids`` are right-padded like ``ids``, each prompt as long as its clean one."""
    e_clean, e_corr = embed(spec, ids, dtype), embed(spec, corrupt_ids, dtype)
    with torch.no_grad():
        corr = run(spec, e_corr, lengths, tid, did, keep=True)
    if steps == 0:
        p, grads = _grads(spec, e_clean, lengths, tid, did)
    else:
        if steps < 1:
            raise ValueError("steps must be >= 1 for EAP-IG")
        total = None
        for j in range(steps):
            a = (j + 0.5) / steps
            _, g = _grads(spec, e_corr + a * (e_clean - e_corr), lengths, tid, did)
            total = g if total is None else _add(total, g)
        grads = _scale(total, 1.0 / steps)
        with torch.no_grad():
            p = run(spec, e_clean, lengths, tid, did, keep=True)
    with torch.no_grad():
        diff = p.writers - corr.writers
        attn, mlp, logits, tokens = _edge_scores(spec, diff, e_clean - e_corr, grads, lengths - 1)
    return EdgeScores(attn, mlp, logits, tokens, p.metric.detach(), corr.metric, p.logits.detach())


def _add(a, b):
    return tuple(
        [x + y for x, y in zip(u, v)] if isinstance(u, list) else u + v for u, v in zip(a, b)
    )


def _scale(a, k: float):
    return tuple([x * k for x in u] if isinstance(u, list) else u * k for u in a)


def ig_baseline(spec: ModelSpec, emb: Tensor, kind: str, pad_id: int) -> Tensor:
    """The IG baseline embeddings ``e'`` of ``emb [B, S, D]``: ``zero``, ``pad`` or ``mean``."""
    if kind == "zero":
        return torch.zeros_like(emb)
    if kind == "pad":
        return spec.W_E[pad_id].to(emb.dtype).expand_as(emb)
    if kind == "mean":
        return spec.W_E.to(emb.dtype).mean(0).expand_as(emb)
    raise ValueError(f"IG baseline {kind!r}: choose one of {', '.join(IG_BASELINES)}")


def _emb_grad(spec, emb, lengths, tid, did):
    emb = emb.detach().requires_grad_(True)
    p = run(spec, emb, lengths, tid, did)
    return torch.autograd.grad(p.metric.sum(), emb)[0], p


def integrated_gradients(
    spec: ModelSpec,
    ids: Tensor,
    lengths: Tensor,
    tid: Tensor,
    did: Tensor,
    baseline: str = "zero",
    steps: int = 32,
    pad_id: int = 0,
    dtype=torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(scores [B, S], metric(e) [B], metric(e') [B])`` (module docstring)."""
    e = embed(spec, ids, dtype)
    e0 = ig_baseline(spec, e, baseline, pad_id)
    total = torch.zeros_like(e)
    for j in range(steps):
        total += _emb_grad(spec, e0 + (j + 0.5) / steps * (e - e0), lengths, tid, did)[0]
    with torch.no_grad():
        m1 = run(spec, e, lengths, tid, did).metric
        m0 = run(spec, e0.contiguous(), lengths, tid, did).metric
    return ((e - e0) * total / steps).sum(-1), m1, m0


def grad_x_input(
    spec: ModelSpec, ids: Tensor, lengths: Tensor, tid: Tensor, did: Tensor, dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """``(scores [B, S], metric [B])``: ``e · ∂metric/∂e`` per position."""
    e = embed(spec, ids, dtype)
    g, p = _emb_grad(spec, e, lengths, tid, did)
    return (e * g).sum(-1), p.metric.detach()


@torch.no_grad()
def rollout_matrix(spec: ModelSpec, ids: Tensor, lengths: Tensor, dtype=torch.float32) -> Tensor:
    """``R [B, S, S]``: attention rollout over all layers (module docstring)."""
    cap = capture(spec, ids, lengths, dtype=dtype, center=False)
    S = ids.shape[1]
    eye = torch.eye(S, dtype=dtype, device=cap.device)
    R = eye.expand(ids.shape[0], S, S)
    for lc in cap.layers:
        A = 0.5 * lc.A.mean(1) + 0.5 * eye
        A = A / A.sum(-1, keepdim=True)
        R = A @ R
    return R


def rollout(spec: ModelSpec, ids: Tensor, lengths: Tensor, dtype=torch.float32) -> Tensor:
    """``[B, S]``: the rollout row of each prompt's target position."""
    R = rollout_matrix(spec, ids, lengths, dtype)
    return R[torch.arange(ids.shape[0]), lengths - 1]
