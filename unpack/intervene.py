"""Interventions on the project's own forward pass: knock attention heads out.

The pass is the one :mod:`unpack.capture` computes from the adapter's weights
(METHOD.md §1, §9 invariant 9), so an intervention works for every supported
family. A head ``h`` of layer ``L`` writes ``z_h[s] · W_O[h]`` (§1): replacing
its mixed values ``z_h`` replaces its output, exactly, because ``W_O`` is
linear. Three replacements:

- ``zero``: ``z_h = 0``, the same as zeroing the head's rows of ``W_O``;
- ``mean``: ``z_h[s]`` = the mean of ``z_h[s]`` over a reference set of prompts
  (position by position);
- ``resample``: ``z_h`` from another prompt's pass.

Downstream heads and MLPs see the changed residual (the knock-out propagates);
nothing else of the pass changes.
"""

from __future__ import annotations

from typing import Optional

import torch

from .adapters.base import ModelSpec
from .capture import (
    attention,
    attn_block,
    capture,
    embed,
    last_logits,
    layer_tables,
    mlp_block,
    unembed_mean,
)

Tensor = torch.Tensor


def _patch(z: Tensor, L: int, ablate: Optional[Tensor], source: Optional[Tensor]) -> Tensor:
    """Replace the mixed values of the heads ``ablate[:, L]`` marks by ``source``
    (zeros when ``source`` is None)."""
    if ablate is None:
        return z
    m = ablate[:, L].to(z.device)[:, :, None, None]  # [B, H, 1, 1]
    repl = torch.zeros_like(z) if source is None else source[:, L].to(z.dtype)
    return torch.where(m, repl, z)


@torch.no_grad()
def forward(
    spec: ModelSpec,
    input_ids: Tensor,
    lengths: Tensor,
    dtype=torch.float32,
    ablate: Optional[Tensor] = None,
    source: Optional[Tensor] = None,
    keep_z: bool = False,
):
    """Logits at each prompt's last position ``[B, V]`` (and, with ``keep_z``, every
    head's mixed values ``[B, L, H, S, d]``) of right-padded ``input_ids [B, S]``.

    ``ablate [B, L, H]`` (or ``[L, H]``) boolean: heads whose ``z`` is replaced by
    ``source [B, L, H, S, d]`` (None: zero ablation)."""
    B, S = input_ids.shape
    dev = spec.W_E.device
    input_ids, lengths = input_ids.to(dev), lengths.to(dev)
    if ablate is not None and ablate.dim() == 2:
        ablate = ablate.expand(B, *ablate.shape)
    x = embed(spec, input_ids, dtype)
    if spec.W_pos is not None:
        x = x + spec.W_pos[:S].to(dtype)
    tables = layer_tables(spec, S, dtype)
    Z = (
        torch.empty(B, spec.n_layers, spec.n_heads, S, spec.d_head, dtype=dtype, device=dev)
        if keep_z
        else None
    )
    for L, lw in enumerate(spec.layers):
        lw = lw.cast(dtype)
        z = _patch(attention(spec, lw, x, *tables[L])[3], L, ablate, source)
        if keep_z:
            Z[:, L] = z
        attn = attn_block(lw, torch.einsum("bhsd,hdD->bhsD", z, lw.W_O))[1]
        out = mlp_block(spec, lw, x, attn)[3]
        x = x + attn + out
    logits = last_logits(spec, x, lengths, dtype)
    return (logits, Z) if keep_z else logits


def logit_diff(logits: Tensor, tid: Tensor, did: Tensor) -> Tensor:
    """The metric per prompt ``[B]``: ``logit[τ] − logit[δ]`` where a distractor is given
    (``did >= 0``), else ``logit[τ] − mean_v logit[v]`` (METHOD.md §3)."""
    ar = torch.arange(logits.shape[0], device=logits.device)
    lt = logits[ar, tid]
    other = torch.where(did >= 0, logits[ar, did.clamp_min(0)], logits.mean(-1))
    return lt - other


@torch.no_grad()
def direct_effects(
    spec: ModelSpec,
    input_ids: Tensor,
    lengths: Tensor,
    tid: Tensor,
    did: Tensor,
    dtype=torch.float32,
) -> Tensor:
    """``[B, L, H]``: each head's direct effect on the metric, ``ĉ_h[t] · d_t`` with
    the distractor's direction where there is one (METHOD.md §3, ``seed="metric"``)."""
    from . import decompose as dec

    cap = capture(spec, input_ids, lengths, dtype=dtype)
    W_U_mean = unembed_mean(spec.W_U, dtype)
    I = dec.seeds(
        cap, cap.writers, spec.W_U, W_U_mean, tid.to(cap.device), did.to(cap.device), "metric"
    )  # [B, N]
    slots = [cap.comps.head_slot(L, h) for L in range(spec.n_layers) for h in range(spec.n_heads)]
    return I[:, slots].reshape(-1, spec.n_layers, spec.n_heads)
