"""The contraction kernels behind docs/METHOD.md §4-5: how the engine computes
the writer scores fast, never what they are (that is :mod:`unpack.decompose`).

The K and Q scores (``C·H·S²`` numbers per reader) are contracted one of three
ways, chosen per layer by cost (:func:`unpack.cost.choose_mode`), all giving the
same numbers:

* fold     contract ``ĉ`` with one D-vector per (h, q): ``W_K Q[h,q]`` (with rotary
           one per (h, q, s): ``W_K R_s^T Q[h,q]``); best while S is short;
* project  project every writer into head space, rotate, contract;
* virtual  as project, but a head writer's projection is ``z_h' (W_O[h'] P Γ W_K)``:
           a d×d "virtual weight" per (writer head, reader head), cached per model
           when it fits, else built per batch.

Shapes: ``B`` prompts, ``C`` writers, ``H`` heads, ``S`` positions, ``D`` width,
``d`` head dim, ``P = (H + Hkv)·d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .adapters.base import ModelSpec
from .cost import CHUNK_ELEMENTS, Shape, virtual_bytes

Tensor = torch.Tensor


class VirtualWeights:
    """``W_O[h'] P Γ_L [W_K | W_Q]`` per (writer layer, reader layer): ``[H, d, P]``.

    Kept for the life of the tracer when all of them fit in ``budget_bytes``
    (12 layers of 12 heads, width 768: about 300 MB); otherwise built when needed and dropped."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, budget_bytes: int = 1 << 30):
        self.spec, self.dtype = spec, dtype
        elem = torch.empty((), dtype=dtype).element_size()
        self.cached = virtual_bytes(Shape.from_spec(spec), elem) <= budget_bytes
        self._store: dict[tuple[int, int], Tensor] = {}

    def get(self, L: int, Wkq: Tensor) -> Tensor:
        """``[L·H, d, P]``: the virtual weights of every head of layers ``< L`` into
        reader ``L`` (``Wkq = Γ_L [W_K | W_Q]``, ``[D, P]``)."""
        if L in self._store:
            return self._store[L]
        W_O = torch.cat([lw.W_O.detach() for lw in self.spec.layers[:L]]).to(self.dtype)
        W_O = self.spec.ln_final.center(W_O)  # P: each head's output centered over D
        vw = W_O @ Wkq.detach()
        if self.cached:
            self._store[L] = vw
        return vw


@dataclass
class EngineOptions:
    """How the engine computes (never what): the K/Q contraction (None: the
    cheapest by :func:`unpack.cost.choose_mode`), the size of a query chunk's
    buffers in elements, the largest projected-writers buffer, the virtual weights,
    and whether the K/Q factors take the fused path (:mod:`unpack.fused`; off: on a
    CPU it was not faster, docs/THROUGHPUT.md)."""

    mode: Optional[str] = None
    chunk_elements: int = CHUNK_ELEMENTS
    max_proj_bytes: int = 1 << 30
    vws: Optional[VirtualWeights] = None
    fused: bool = False


def rotate_positions(x: Tensor, cos: Tensor, sin: Tensor, r: int) -> None:
    """Rotary embedding in place on ``x [B, S, C, G, d]`` (positions second, head dim
    last), ``cos, sin: [S, r]``: the same rotate-half rotation as
    :meth:`unpack.adapters.base.Rotary.apply`, laid out as the projected writers lie."""
    half = r // 2
    xr = x[..., :r]
    rot = torch.cat((-xr[..., half:], xr[..., :half]), -1)
    c, s_ = cos[None, :, None, None], sin[None, :, None, None]  # [1, S, 1, 1, r]
    x[..., :r] = xr * c + rot * s_


def fold(u: Tensor, ch: Tensor, inv: Tensor, q0: int, q_on_u: bool, blocks: int = 4) -> Tensor:
    """``out[b, h, i, j, c] = (u[b, h, i] · ch[b, c, j]) · inv`` → ``[B, H, I, J, C]``,
    causal: only pairs with source ``<=`` query are formed (the rest stay zero).

    The query index ``q = q0 + i`` runs along ``u`` (K side, sources along ``ch``)
    when ``q_on_u``, else ``q = q0 + j`` runs along ``ch`` (Q side). The query range
    is cut into ``blocks`` GEMMs, each over the sources it can see, with the writers
    as they lie in the buffer (rows ``(c, j)``); one pass per block then lays the
    result out writers last and applies ``inv`` (broadcast over ``[B, H, I, J, C]``)."""
    B, H, I, D = u.shape
    C, J = ch.shape[1], ch.shape[2]
    out = u.new_zeros(B, H, I, J, C)
    n = I if q_on_u else J
    step = -(-n // max(1, min(blocks, n)))
    for a in range(0, n, step):
        b = min(n, a + step)
        if q_on_u:  # queries a..b-1 along u see sources < q0 + b along ch
            ub, cb, jb = u[:, :, a:b], ch[:, :, : min(J, q0 + b)], slice(0, min(J, q0 + b))
            ib, iv = slice(a, b), inv[..., jb, :]
        else:  # queries a..b-1 along ch see sources < q0 + b along u
            ub, cb, ib = u[:, :, : min(I, q0 + b)], ch[:, :, a:b], slice(0, min(I, q0 + b))
            jb, iv = slice(a, b), inv[..., a:b, :]
        i, j = ub.shape[2], cb.shape[2]
        prod = ub.reshape(B, H * i, D) @ cb.reshape(B, C * j, D).transpose(1, 2)  # [B, H·i, C·j]
        torch.mul(prod.view(B, H, i, C, j).transpose(-1, -2), iv, out=out[:, :, ib, jb])
    return out


def fold_per_source(u: Tensor, ch: Tensor, inv: Tensor) -> Tensor:
    """``out[b, h, i, j, c] = (u[b, h, i, j] · ch[b, c, j]) · inv`` → ``[B, H, I, J, C]``
    (the rotary fold: one D-vector per pair): a GEMM per position ``j`` over the
    writers as they lie in the buffer."""
    B, H, I, J, D = u.shape
    C = ch.shape[1]
    uj = u.permute(0, 3, 1, 2, 4).reshape(B, J, H * I, D)
    prod = torch.matmul(uj, ch.transpose(1, 2).transpose(-1, -2))  # [B, J, H·I, C]
    prod = prod.view(B, J, H, I, C).permute(0, 2, 3, 1, 4)
    return torch.mul(prod, inv, out=u.new_empty(B, H, I, J, C))


def per_position(chat: Tensor, vec: Tensor) -> Tensor:
    """``out[b, c, s, k] = chat[b, c, s] · vec[b, s, k]`` → ``[B, C, S, K]`` for
    ``chat [B, C, S, D]``, ``vec [B, S, K, D]``: one GEMM per position over the
    writers as they lie in the buffer, a prompt at a time (batched over the
    prompts too, the contraction would first copy every writer position-major)."""
    return torch.stack(
        [torch.bmm(chat[b].transpose(0, 1), vec[b].transpose(1, 2)) for b in range(chat.shape[0])]
    ).transpose(1, 2)


def project_writers(chat: Tensor, Wkq: Tensor, inv_sigma: Tensor, heads=None) -> Tensor:
    """Every writer ``chat [B, C, S, D]`` through ``Wkq [D, P]`` and scaled by
    ``inv_sigma [B, S]``, laid out ``[B, S, C, P]``: positions first, so that a head's
    ``d`` columns of every (source, writer) pair form one matrix with rows ``(s, c)``
    (leading dimension ``P``) that the chunks' GEMMs read where it lies.

    One GEMM per (prompt, writer) writes its ``[S, P]`` rows straight into the result
    (a strided output, no transposed copy); the scale goes on the ``D``-wide input.
    ``heads=(comps, Z, vw, L)``: the head writers of layers ``< L`` go through their
    virtual weights ``vw`` (:class:`VirtualWeights`, ``[L·H, d, P]``) from the mixed
    values ``Z [B, L', H, S, d]`` instead: ``(z_h' / σ) (W_O[h'] P Γ W)``."""
    B, C, S, _ = chat.shape
    out = chat.new_empty(B, S, C, Wkq.shape[1])
    full = list(range(C))
    if heads is not None:
        comps, Z, vw, L = heads
        H = comps.n_heads
        full = list(range(comps.n_emb)) + [comps.mlp_slot(Lw) for Lw in range(L)]
    for b in range(B):
        inv = inv_sigma[b, :, None]
        for c in full:
            torch.mm(chat[b, c] * inv, Wkq, out=out[b, :, c])
        if heads is not None:
            for Lw in range(L):
                zs = Z[b, Lw] * inv  # [H, S, d]
                for h in range(H):
                    torch.mm(zs[h], vw[Lw * H + h], out=out[b, :, comps.head_slot(Lw, h)])
    return out
