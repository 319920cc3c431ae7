"""The credit flow (METHOD.md §6): one backward sweep, layer by layer, as dense
tensor operations over prompts ``B``, roots ``R``, heads, positions and writers.

Accumulators ``F0`` (seed credit, depth 0) and ``Fk`` (credit received from a
parent, depth >= 1) are ``[B, R, N, S]`` over the credited components. Edges
are summed over positions into ``E [B, R, N_parent, N_child, 4]`` (modes K, Q,
V, MLP) and, when asked for, kept position-resolved above a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .decompose import HeadChunk, HeadOps, MLPOps
from .profile import NO_PROFILE

Tensor = torch.Tensor
MODES = ("K", "Q", "V", "MLP")
TINY = 1e-14  # credit below this is not distributed (§6)


def initial_credit(
    I: Tensor, t: list[int], roots: list[list[Optional[tuple[int, int]]]], S: int
) -> Tensor:
    """``F0 [B, R, N, S]`` at the start of the sweep (docs/METHOD.md §3, §6): for a
    root ``None`` the seeds ``F0[c][t] = I_c`` (``I [B, N]``, ``t`` the target
    position of each prompt); for a root ``(c, q)`` (rerooting) ``1.0`` at
    component ``c``, position ``q`` and nothing else. ``roots[b]`` lists prompt
    ``b``'s roots; a prompt with fewer roots than ``R`` leaves the rest empty."""
    B, N = I.shape
    F0 = I.new_zeros(B, max(len(rs) for rs in roots), N, S)
    for b, rs in enumerate(roots):
        for r, root in enumerate(rs):
            if root is None:
                F0[b, r, :, t[b]] = I[b]
            else:
                F0[b, r, root[0], root[1]] = 1.0
    return F0


def percent_credit(x, pos_total: float):
    """``100 · x / Σ positive credit`` (docs/METHOD.md §6 ``credit_pct``; §7 a path's
    percent), zero where no credit is positive. ``x``: a float or an array."""
    if pos_total > 0:
        return 100.0 * x / pos_total
    return np.zeros_like(x) if np.ndim(x) else 0.0


def credit_summary(credit: np.ndarray) -> tuple[np.ndarray, float, float]:
    """docs/METHOD.md §6, the outputs of one token-credit vector ``credit [S]``:
    ``(credit_pct, suppression, Σ positive)`` with
    ``suppression = Σ|negative| / (Σ positive + Σ|negative|)`` (0 without credit)."""
    pos_total = float(credit[credit > 0].sum())
    neg_total = float(abs(credit[credit < 0].sum()))
    supp = neg_total / (pos_total + neg_total) if pos_total + neg_total > 0 else 0.0
    return percent_credit(credit, pos_total), supp, pos_total


def thr(x: Tensor) -> Tensor:
    """Zero where ``|x| < 1e-14``."""
    return torch.where(x.abs() >= TINY, x, torch.zeros_like(x))


@dataclass
class Flow:
    F0: Tensor  # [B, R, N, S]
    Fk: Tensor
    E: Tensor  # [B, R, N, N, 4]
    pos_min: Optional[Tensor] = None  # [B, R] threshold for position-resolved edges
    pos_edges: list = field(
        default_factory=list
    )  # chunks of (b, r, parent, ppos, child, cpos, mode, w)

    @classmethod
    def start(
        cls, F0: Tensor, pos_min: Optional[Tensor] = None, Fk: Optional[Tensor] = None
    ) -> "Flow":
        B, R, N, S = F0.shape
        return cls(
            F0=F0.clone(),
            Fk=torch.zeros_like(F0) if Fk is None else Fk.clone(),
            E=F0.new_zeros(B, R, N, N, 4),
            pos_min=pos_min,
        )

    @property
    def total(self) -> Tensor:
        """Component flow ``(F0 + Fk)[c][q]``."""
        return self.F0 + self.Fk

    def token_credit(self, n_emb: int) -> Tensor:
        """``credit[s]``: flow into ``embedding`` (+ ``pos_embedding``) → ``[B, R, S]``."""
        return self.total[:, :, :n_emb].sum(2)

    def _keep(self, amount: Tensor, parent: Tensor, ppos: Tensor, cpos: Tensor, mode: int):
        """Store position-resolved edges ``amount[b, r, i, c]`` above the threshold,
        where ``i`` indexes (parent, ppos, cpos) triples."""
        big = (amount.abs() >= self.pos_min[:, :, None, None]) & (amount != 0)
        b, r, i, c = big.nonzero(as_tuple=True)
        self.pos_edges.append(
            (b, r, parent[i], ppos[i], c, cpos[i], torch.full_like(b, mode), amount[b, r, i, c])
        )

    def mlp_step(self, slot: int, ops: MLPOps):
        """Distribute the credit of ``mlp_L`` (component ``slot``) to its writers at q."""
        x0, xk = thr(self.F0[:, :, slot]), thr(self.Fk[:, :, slot])  # [B, R, S]
        C = ops.fac0.shape[1]
        amt = x0[:, :, None] * ops.fac0[:, None] + xk[:, :, None] * ops.fack[:, None]  # [B,R,C,S]
        self.Fk[:, :, :C] += amt
        self.E[:, :, slot, :C, 3] += amt.sum(-1)
        if self.pos_min is not None:
            S = amt.shape[-1]
            q = torch.arange(S, device=amt.device)
            self._keep(amt.transpose(2, 3), torch.full_like(q, slot), q, q, 3)

    def holds(self, lo: int, hi: int) -> bool:
        """Whether any of the components ``lo .. hi-1`` holds credit the sweep would
        distribute (``|x| >= 1e-14``)."""
        return bool(
            (self.F0[:, :, lo:hi].abs() >= TINY).any() or (self.Fk[:, :, lo:hi].abs() >= TINY).any()
        )

    def source_split(self, slot: int, H: int, ops: HeadOps) -> Tensor:
        """Step 1 for all heads of a layer: ``x_s = x · f_s`` → ``[B, R, H, Q, S]``."""
        x0 = thr(self.F0[:, :, slot : slot + H])[..., None]
        xk = thr(self.Fk[:, :, slot : slot + H])[..., None]
        return thr(x0 * ops.f0[:, None]) + thr(xk * ops.fk[:, None])

    def values_step(self, slot: int, H: int, xs: Tensor, ops: HeadOps):
        """The V branch of heads ``slot .. slot+H-1``: to writers at the source s
        (value shares do not depend on q)."""
        if ops.Vn is None:
            return
        T = xs.sum(3)[:, :, None] * ops.Vn[:, None]  # [B, R, C, H, S]
        C = T.shape[2]
        self.Fk[:, :, :C] += T.sum(3)
        self.E[:, :, slot : slot + H, :C, 2] += T.sum(4).transpose(2, 3)

    def heads_chunk(self, slot: int, H: int, xs: Tensor, ops: HeadOps, ch: HeadChunk):
        """The K and Q branches for the query positions of one chunk: each child's
        credit, per parent head, in one pass over the branch's scores; summed over
        parent heads into ``Fk`` and over positions into the edges."""
        q0, q1 = ch.q0, ch.q1
        x = xs[:, :, :, q0:q1, :q1]  # [B, R, H, Qc, S1]
        heads, C = slice(slot, slot + H), ops.C
        if ch.kscale is not None:  # to writers at the source position s: Σ_q
            T = ch.key_credit(x)  # [B, R, H, S1, C]
            self.Fk[:, :, :C, :q1] += T.sum(2).transpose(2, 3)
            self.E[:, :, heads, :C, 0] += T.sum(3)
        if ch.qscale is not None:  # to writers at the query position q: Σ_s
            T = ch.query_credit(x)  # [B, R, H, Qc, C]
            self.Fk[:, :, :C, q0:q1] += T.sum(2).transpose(2, 3)
            self.E[:, :, heads, :C, 1] += T.sum(3)
        if self.pos_min is not None:
            self._keep_heads(slot, H, x, ops, ch)

    def _keep_heads(self, slot: int, H: int, x: Tensor, ops: HeadOps, ch: HeadChunk):
        B, R, _, Qc, S1 = x.shape
        dev = x.device
        h, q, s = torch.meshgrid(
            torch.arange(H, device=dev),
            torch.arange(ch.q0, ch.q1, device=dev),
            torch.arange(S1, device=dev),
            indexing="ij",
        )
        h, q, s = h.reshape(-1), q.reshape(-1), s.reshape(-1)
        Kn = ch.Kn
        if Kn is not None:  # parent h@q -> child c@s
            amt = x[..., None] * Kn[:, None]  # [B,R,H,Qc,S1,C]
            self._keep(amt.reshape(B, R, H * Qc * S1, -1), slot + h, q, s, 0)
        Qn = ch.Qn
        if Qn is not None:  # parent h@q -> child c@q, summed over sources
            amt = torch.einsum("brhqs,bhsqc->brhqc", x, Qn)
            hq = torch.arange(H * Qc, device=dev)
            qq = ch.q0 + hq % Qc
            self._keep(amt.reshape(B, R, H * Qc, -1), slot + hq // Qc, qq, qq, 1)
        if ops.Vn is not None:  # parent h@q -> child c@s
            Vn = ops.Vn[..., :S1].permute(0, 2, 3, 1)[:, None, :, None]  # [B,1,H,1,S1,C]
            amt = x[..., None] * Vn
            self._keep(amt.reshape(B, R, H * Qc * S1, -1), slot + h, q, s, 2)

    def position_edges(self):
        """All kept position-resolved edges as a tuple of 1-D tensors
        ``(b, r, parent, ppos, child, cpos, mode, weight)``; the K/V entries of the
        same (parent@q, child@s) from different sources are already summed."""
        if not self.pos_edges:
            return None
        return tuple(torch.cat(parts) for parts in zip(*self.pos_edges))


def query_range(xs: Tensor, search=None) -> tuple[int, int]:
    """``(q_lo, q_hi)``: the query positions whose K and Q factors the sweep needs,
    from the first to the last where a head of the layer distributes credit
    (``xs [B, R, H, Q, S]``) or the path search holds a head node; ``(0, 0)``
    for none. Elsewhere the credit is zero and so is every amount it would send."""
    live = xs.ne(0).any(4).any(2).any(1).any(0)  # [Q]
    if search is not None:
        live[search.head_positions()] = True
    q = live.nonzero(as_tuple=True)[0]
    return (int(q[0]), int(q[-1]) + 1) if len(q) else (0, 0)


def sweep(
    cap,
    ops_for_layer,
    F0: Tensor,
    pos_min: Optional[Tensor] = None,
    Fk: Optional[Tensor] = None,
    search=None,
    profile=NO_PROFILE,
) -> Flow:
    """Run §6 from layer L-1 down to 0: ``mlp_L`` first, then the heads of L.

    ``ops_for_layer(L) -> (MLPOps, HeadOps)`` supplies the factors; the heads' K
    and Q factors come a chunk of query positions at a time and are freed after
    use. ``search`` (a :class:`unpack.paths.PathSearch`), if given, expands its
    paths with the same factors while they are alive. ``profile`` (an
    :class:`unpack.profile.Profile`) is told which work is the decomposition
    (``decompose_s``: the factors and the chunks) and which the path search
    (``paths_s``)."""
    comps = cap.comps
    flow = Flow.start(F0, pos_min, Fk)
    H = comps.n_heads
    for L in reversed(range(cap.spec.n_layers)):
        slot, mslot = comps.head_slot(L), comps.mlp_slot(L)  # the heads, then mlp_L
        if not flow.holds(slot, mslot + 1) and (search is None or not search.has_pending(L)):
            continue  # no credit reaches layer L (a root below it): nothing to distribute
        with profile("decompose_s"):
            mops, hops = ops_for_layer(L)
        flow.mlp_step(mslot, mops)
        if search is not None:
            with profile("paths_s"):
                search.expand_mlp(L, mops)
        xs = flow.source_split(slot, H, hops)
        flow.values_step(slot, H, xs, hops)
        if search is not None:
            search.start_heads(L)
        chunks = hops.chunks(*query_range(xs, search))
        while True:
            with profile("decompose_s"):
                ch = next(chunks, None)
            if ch is None:
                break
            flow.heads_chunk(slot, H, xs, hops, ch)
            if search is not None:
                with profile("paths_s"):
                    search.expand_heads(L, hops, ch)
            del ch
        del mops, hops, xs
    return flow
