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

import torch

from .decompose import HeadOps, MLPOps

Tensor = torch.Tensor
MODES = ("K", "Q", "V", "MLP")
TINY = 1e-14  # credit below this is not distributed (§6)


def thr(x: Tensor) -> Tensor:
    """Zero where ``|x| < 1e-14``."""
    return torch.where(x.abs() >= TINY, x, torch.zeros_like(x))


@dataclass
class Flow:
    F0: Tensor  # [B, R, N, S]
    Fk: Tensor
    E: Tensor  # [B, R, N, N, 4]
    pos_min: Optional[Tensor] = None  # [B, R] threshold for position-resolved edges
    pos_edges: list = field(default_factory=list)  # chunks of (b, r, parent, ppos, child, cpos, mode, w)

    @classmethod
    def start(cls, F0: Tensor, pos_min: Optional[Tensor] = None, Fk: Optional[Tensor] = None) -> "Flow":
        B, R, N, S = F0.shape
        return cls(F0=F0.clone(), Fk=torch.zeros_like(F0) if Fk is None else Fk.clone(),
                   E=F0.new_zeros(B, R, N, N, 4), pos_min=pos_min)

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
        self.pos_edges.append((b, r, parent[i], ppos[i], c, cpos[i],
                               torch.full_like(b, mode), amount[b, r, i, c]))

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

    def source_split(self, slot: int, H: int, ops: HeadOps) -> Tensor:
        """Step 1 for all heads of a layer: ``x_s = x · f_s`` → ``[B, R, H, Q, S]``."""
        x0 = thr(self.F0[:, :, slot:slot + H])[..., None]
        xk = thr(self.Fk[:, :, slot:slot + H])[..., None]
        return thr(x0 * ops.f0[:, None]) + thr(xk * ops.fk[:, None])

    def heads_step(self, slot: int, H: int, ops: HeadOps):
        """Distribute the credit of heads ``slot .. slot+H-1`` through K, Q and V."""
        xs = self.source_split(slot, H, ops)
        heads = slice(slot, slot + H)
        # one pass over each branch's [B,C,H,Q,S] factors gives both the children's
        # credit (summed over parent heads) and the edges (summed over positions)
        branches = []
        if ops.Kn is not None:  # to writers at the source position s
            branches.append((0, torch.einsum("brhqs,bchqs->brchs", xs, ops.Kn)))
        if ops.Qn is not None:  # to writers at the query position q
            branches.append((1, torch.einsum("brhqs,bchqs->brchq", xs, ops.Qn)))
        if ops.Vn is not None:  # to writers at s; value shares do not depend on q
            branches.append((2, xs.sum(3)[:, :, None] * ops.Vn[:, None]))
        for mode, T in branches:  # T: [B, R, C, H, S]
            C = T.shape[2]
            self.Fk[:, :, :C] += T.sum(3)
            self.E[:, :, heads, :C, mode] += T.sum(4).transpose(2, 3)
        if self.pos_min is not None:
            self._keep_heads(slot, H, xs, ops)

    def _keep_heads(self, slot: int, H: int, xs: Tensor, ops: HeadOps):
        B, R, _, S, _ = xs.shape
        dev = xs.device
        h, q, s = torch.meshgrid(torch.arange(H, device=dev), torch.arange(S, device=dev),
                                 torch.arange(S, device=dev), indexing="ij")
        h, q, s = h.reshape(-1), q.reshape(-1), s.reshape(-1)
        if ops.Kn is not None:  # parent h@q -> child c@s
            amt = xs[..., None] * ops.Kn.permute(0, 2, 3, 4, 1)[:, None]  # [B,R,H,Q,S,C]
            self._keep(amt.reshape(B, R, H * S * S, -1), slot + h, q, s, 0)
        if ops.Qn is not None:  # parent h@q -> child c@q, summed over sources
            amt = torch.einsum("brhqs,bchqs->brhqc", xs, ops.Qn)
            hq = torch.arange(H * S, device=dev)
            self._keep(amt.reshape(B, R, H * S, -1), slot + hq // S, hq % S, hq % S, 1)
        if ops.Vn is not None:  # parent h@q -> child c@s
            amt = xs[..., None] * ops.Vn.permute(0, 2, 3, 1)[:, None, :, None]  # [B,R,H,Q,S,C]
            self._keep(amt.reshape(B, R, H * S * S, -1), slot + h, q, s, 2)

    def position_edges(self):
        """All kept position-resolved edges as a tuple of 1-D tensors
        ``(b, r, parent, ppos, child, cpos, mode, weight)``; the K/V entries of the
        same (parent@q, child@s) from different sources are already summed."""
        if not self.pos_edges:
            return None
        return tuple(torch.cat(parts) for parts in zip(*self.pos_edges))


def sweep(cap, ops_for_layer, F0: Tensor, pos_min: Optional[Tensor] = None,
          Fk: Optional[Tensor] = None, on_layer=None) -> Flow:
    """Run §6 from layer L-1 down to 0: ``mlp_L`` first, then the heads of L.

    ``ops_for_layer(L) -> (MLPOps, HeadOps)`` supplies the factors;
    ``on_layer(L, mops, hops)``, if given, is called after they are built (paths
    use it to expand with the same factors while they are alive)."""
    comps = cap.comps
    flow = Flow.start(F0, pos_min, Fk)
    for L in reversed(range(cap.spec.n_layers)):
        mops, hops = ops_for_layer(L)
        flow.mlp_step(comps.mlp_slot(L), mops)
        flow.heads_step(comps.head_slot(L), comps.n_heads, hops)
        if on_layer is not None:
            on_layer(L, mops, hops)
    return flow
