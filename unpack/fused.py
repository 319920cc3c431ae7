"""The fused K/Q path (off by default: ``Tracer.engine.fused = True``).

The sweep needs three things of a chunk's K (and Q) scores: per (h, q, s) the two
sums over writers that ``safe_denom`` takes (docs/METHOD.md §6), and per child the
credit ``Σ_q y·key_c`` (``Σ_s y·query_c``). The scores are linear in the writers'
projections, so the centering (§4), one of the two sums and the Q branch's credit
are products of small factors; only the sum of ``|key_c|`` over writers needs
every score, and it is taken in one pass (an L1 distance per query row). No
score tensor is centered, normalized or multiplied whole.

Measured on GPT-2 small's shape at 256 tokens on a CPU it was not faster than the
plain path (the K/Q GEMMs, which both paths make, dominate there), so the planner
does not choose it; see docs/THROUGHPUT.md.
"""

from __future__ import annotations

from typing import Optional

import torch

from .decompose import AttnScores, HeadOps, denominator

Tensor = torch.Tensor


def use_fused(scores: AttnScores) -> bool:
    """Whether a layer's K and Q factors can take the fused path: the project and
    virtual modes, without an attention soft-cap or a sliding window."""
    return scores.mode != "fold" and scores.ratio is None and scores.lw.window is None


def attach(ops: HeadOps) -> HeadOps:
    """``ops`` with its K/Q chunks made by :class:`FusedKQ` where :func:`use_fused` allows."""
    sc = ops.scores
    if sc is not None and use_fused(sc):
        ops.fused = FusedKQ(
            sc.lc.Q, sc.Kx, sc.kcT, sc.qcT, sc.lw.attn_scale, ops.beta, ops.w_K, ops.w_Q
        )
    return ops


class FusedKQ:
    """The fused K/Q factors of one reader layer (project and virtual modes, no
    soft-cap, no window): chunks of query positions whose credit is distributed
    through low-rank products instead of the centered score tensors.

    ``Q [B, H, S, d]``, ``K [B, H, S, d]`` (kv heads expanded), ``kcT [B, Hkv, d, S, C]``,
    ``qcT [B, H, d, S, C]``: the writers projected as :class:`unpack.decompose.AttnScores`
    lays them out; ``scale`` the attention scale; ``w_K, w_Q`` the branch weights."""

    def __init__(
        self,
        Q: Tensor,
        K: Tensor,
        kcT: Tensor,
        qcT: Tensor,
        scale: float,
        beta: float,
        w_K: float,
        w_Q: float,
    ):
        self.Q, self.K = Q * scale, K  # the scale once, on the queries
        self.kcT, self.qcT, self.beta, self.w_K, self.w_Q = kcT, qcT, beta, w_K, w_Q
        S = K.shape[2]
        n = torch.arange(1, S + 1, device=K.device, dtype=K.dtype)
        self.K_mean = K.cumsum(2) / n[:, None]  # mean_{s' <= q} K[s']: [B, H, S, d]
        self.k_sum = kcT.sum(-1) if w_K else None  # Σ_c kc[s, c]: [B, Hkv, d, S]
        self._prefix, self._next = None, 0

    def _key_mean(self, q0: int, q1: int) -> Tensor:
        """``Σ_{s' <= q} kc[s', c]`` for ``q0 <= q < q1`` → ``[B, Hkv, d, Qc, C]`` (a running
        prefix when the chunks come in order)."""
        if self._next != q0 or self._prefix is None:
            self._prefix = self.kcT[:, :, :, :q0].sum(3)
        Qc = q1 - q0
        tri = torch.ones(Qc, Qc, dtype=self.kcT.dtype, device=self.kcT.device).tril_()
        cum = (tri @ self.kcT[:, :, :, q0:q1]).add_(
            self._prefix[:, :, :, None]
        )  # a GEMM, not a scan
        self._prefix, self._next = cum[:, :, :, -1], q1
        return cum

    def chunk(self, q0: int, q1: int) -> "FusedChunk":
        return FusedChunk(self, q0, q1)


def _scale(T: Tensor, N: Tensor, beta: float, w: float, q0: int) -> Tensor:
    """``w · valid / safe_denom`` from the two sums over writers ``T, N [B, H, Qc, S1]``,
    zero where ``N < 1e-10`` and for sources after the query (§6)."""
    den, valid = denominator(T, N, beta)
    out = w * valid.to(T.dtype) / den
    Qc, S1 = T.shape[-2:]
    q = torch.arange(q0, q0 + Qc, device=T.device)
    return out.mul_((torch.arange(S1, device=T.device)[None, :] <= q[:, None]).to(T.dtype))


class FusedChunk:
    """The K and Q factors of query positions ``q0 .. q1-1`` (sources ``0 .. q1-1``),
    as :class:`unpack.decompose.HeadChunk` gives them, from :class:`FusedKQ`: the
    raw scores ``rawK [B, H, Qc, S1, C]`` and ``rawQ [B, H, Qc, S1, C]`` with their
    means ``mK, mQ [B, H, Qc, C]`` (``key_c = rawK − mK``), and the factors
    ``kscale, qscale [B, H, Qc, S1]``."""

    def __init__(self, f: FusedKQ, q0: int, q1: int):
        self.f, self.q0, self.q1 = f, q0, q1
        B, H, _, d = f.Q.shape
        Hkv, C = f.kcT.shape[1], f.kcT.shape[-1]
        G, Qc = H // Hkv, q1 - q0
        self.kscale = self.qscale = None
        if f.w_K:
            Qs = f.Q[:, :, q0:q1]  # [B, H, Qc, d]
            Qg = Qs.reshape(B, Hkv, G * Qc, d)
            self.rawK = (Qg @ f.kcT[:, :, :, :q1].reshape(B, Hkv, d, q1 * C)).view(B, H, Qc, q1, C)
            cum = f._key_mean(q0, q1)  # [B, Hkv, d, Qc, C]
            n = torch.arange(q0 + 1, q1 + 1, device=Qs.device, dtype=Qs.dtype)
            mK = torch.einsum("bgiqe,bgeqc->bgiqc", Qs.view(B, Hkv, G, Qc, d), cum)
            self.mK = (mK / n[:, None]).reshape(B, H, Qc, C)
            N = _l1(self.rawK, self.mK)
            T = torch.einsum("bgiqe,bges->bgiqs", Qs.view(B, Hkv, G, Qc, d), f.k_sum[:, :, :, :q1])
            T = T.reshape(B, H, Qc, q1) - self.mK.sum(-1)[..., None]
            self.kscale = _scale(T, N, f.beta, f.w_K, q0)
        if f.w_Q:
            qc = f.qcT[:, :, :, q0:q1].permute(0, 1, 3, 2, 4)  # [B, H, Qc, d, C]
            self.rawQ = f.K[:, :, None, :q1] @ qc  # [B, H, Qc, S1, C]
            Km = f.K_mean[:, :, q0:q1]  # [B, H, Qc, d]
            self.mQ = (Km[..., None] * qc).sum(3)  # [B, H, Qc, C]
            N = _l1(self.rawQ, self.mQ)
            qsum = qc.sum(-1)  # [B, H, Qc, d]
            T = qsum @ f.K[:, :, :q1].transpose(-1, -2) - (qsum * Km).sum(-1)[..., None]
            self.qscale = _scale(T, N, f.beta, f.w_Q, q0)

    # the credit each writer receives, per parent head
    def key_credit(self, x: Tensor) -> Tensor:
        """``Σ_q y[q, s] key_c[h, q, s]`` with ``y = x · kscale`` → ``[B, R, H, S1, C]``
        for ``x [B, R, H, Qc, S1]``: ``Σ_q y rawK[q, s, c] − Σ_q y mK[q, c]``."""
        y = x * self.kscale[:, None]
        part = torch.stack([(self.rawK * y[:, r, ..., None]).sum(2) for r in range(y.shape[1])], 1)
        return part.sub_(torch.einsum("brhqs,bhqc->brhsc", y, self.mK))

    def query_credit(self, x: Tensor) -> Tensor:
        """``Σ_s y[q, s] query_c[h, q, s]`` with ``y = x · qscale`` → ``[B, R, H, Qc, C]``:
        ``qc[q, c] · (Σ_s y (K[s] − mean_{s' <= q} K[s']))``."""
        f = self.f
        y = x * self.qscale[:, None]  # [B, R, H, Qc, S1]
        S1 = x.shape[-1]
        W = torch.einsum("brhqs,bhse->brhqe", y, f.K[:, :, :S1])
        W = W - y.sum(-1, keepdim=True) * f.K_mean[:, None, :, self.q0 : self.q1]
        return torch.einsum("brhqe,bheqc->brhqc", W, f.qcT[:, :, :, self.q0 : self.q1])

    # single rows (the path search) and whole tensors (position-resolved edges)
    def key_rows(self, b: Tensor, h: Tensor, qi: Tensor) -> Tensor:
        """``key_c · kscale`` of the (prompt, head, query) triples → ``[n, S1, C]``."""
        return (self.rawK[b, h, qi] - self.mK[b, h, qi][:, None]) * self.kscale[b, h, qi][..., None]

    def query_rows(self, b: Tensor, h: Tensor, qi: Tensor) -> Tensor:
        """``query_c · qscale`` of the triples → ``[n, S1, C]``."""
        return (self.rawQ[b, h, qi] - self.mQ[b, h, qi][:, None]) * self.qscale[b, h, qi][..., None]

    @property
    def Kn(self) -> Optional[Tensor]:
        """``[B, H, Qc, S1, C]``: ``w_K · key_c / safe_denom``."""
        if self.kscale is None:
            return None
        return (self.rawK - self.mK[:, :, :, None]) * self.kscale[..., None]

    @property
    def Qn(self) -> Optional[Tensor]:
        """``[B, H, S1, Qc, C]``: ``w_Q · query_c / safe_denom``."""
        if self.qscale is None:
            return None
        return ((self.rawQ - self.mQ[:, :, :, None]) * self.qscale[..., None]).transpose(2, 3)


def _l1(raw: Tensor, mean: Tensor) -> Tensor:
    """``Σ_c |raw[..., q, s, c] − mean[..., q, c]|`` → ``[..., Qc, S1]`` in one pass (an L1
    distance per query row)."""
    *lead, Qc, S1, C = raw.shape
    n = raw[..., 0, 0, 0].numel() * Qc
    return torch.cdist(raw.reshape(n, S1, C), mean.reshape(n, 1, C), p=1).view(*lead, Qc, S1)
