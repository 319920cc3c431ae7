"""Named paths (docs/METHOD.md §7), expanded with the same factors as the sweep.

A partial path is a node: (prompt b, root r, component, position, depth class,
score, parent node, mode of the hop into it). Layer by layer, top down, every
pending node of that layer is expanded at once (tensor code over nodes, writers
and positions) into children whose ``|score| >= path_min_frac · Σ|seeds|``.
Children that are embeddings end a path. Steps through the same (parent@q,
child@s, mode) are one hop: the Q branch is summed over the sources it reads.

Memory is bounded (docs/RELIABILITY.md): the node table holds at most
``max_nodes`` nodes and, given ``max_bytes``, at most ``max_bytes / NODE_BYTES``;
nodes are expanded a slice at a time so that one slice's candidate children
take about a quarter of that. Past the cap the weakest children are dropped
and the search says ``truncated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .flow import MODES, TINY, percent_credit, thr

Tensor = torch.Tensor
SEED = -1
NODE_BYTES = (
    600  # one node: its table row (61 bytes, twice while the table grows), its share of a slice
)
CANDIDATE_BYTES = 100  # one candidate child while a slice is expanded (its score, factors, indices)


@dataclass
class Path:
    chain: str
    score: float
    score_pct: float
    source_pos: int
    source_token: str
    modes: list[str]
    depth: int
    hops: list[tuple[str, int, Optional[str]]]

    def to_dict(self) -> dict:
        return {
            "chain": self.chain,
            "score": self.score,
            "score_pct": self.score_pct,
            "source_pos": self.source_pos,
            "source_token": self.source_token,
            "modes": self.modes,
            "depth": self.depth,
            "hops": [list(h) for h in self.hops],
        }


def truncation_notice(search: "PathSearch") -> list[str]:
    """The warning a result carries when its path search stopped at its node cap."""
    if not search.truncated:
        return []
    why = (
        f"the memory budget ({search.max_bytes / 2**30:.2f} GiB, unpack.plan.path_bytes)"
        if search.memory_capped
        else "max_path_nodes"
    )
    return [
        f"path search truncated at {search.max_nodes:,} partial paths, the cap set by {why}: "
        "the weakest were dropped, so the paths and path credit are the strongest found, "
        "not all; raise path_min_frac (--set path_min_frac=1e-4) to search fewer"
    ]


@dataclass
class PathSearch:
    """Vectorized path expansion over a batch. Construct with the seeds, then call
    hand it to :func:`unpack.flow.sweep`, which calls :meth:`expand_mlp`,
    :meth:`start_heads` and :meth:`expand_heads` with the factors while they are alive."""

    comps: object
    seeds: Tensor  # [B, R, N, S] depth-0 credit
    min_score: Tensor  # [B, R] pruning threshold
    max_nodes: int
    keep_remainder: bool = False
    max_bytes: Optional[int] = None  # memory budget (unpack.plan.path_bytes): caps max_nodes
    # node table (1-D tensors, one entry per node)
    b: Tensor = field(init=False)
    r: Tensor = field(init=False)
    comp: Tensor = field(init=False)
    pos: Tensor = field(init=False)
    dclass: Tensor = field(init=False)
    score: Tensor = field(init=False)
    parent: Tensor = field(init=False)
    mode: Tensor = field(init=False)
    pending: Tensor = field(init=False)  # bool per node: still to expand
    truncated: bool = field(init=False, default=False)
    memory_capped: bool = field(init=False, default=False)  # max_nodes lowered by max_bytes
    remainder: Optional[tuple[Tensor, Tensor]] = field(init=False, default=None)

    def __post_init__(self):
        if self.max_bytes is not None and self.max_bytes // NODE_BYTES < self.max_nodes:
            self.max_nodes, self.memory_capped = max(1, self.max_bytes // NODE_BYTES), True
        self.slice_bytes = max(self.max_nodes * NODE_BYTES // 4, 1 << 20)
        s = self.seeds
        floor = self.min_score.clamp_min(TINY)[:, :, None, None]
        keep = s.abs() >= floor
        if self.keep_remainder:
            self.remainder = (torch.where(keep, torch.zeros_like(s), s), torch.zeros_like(s))
        b, r, c, p = keep.nonzero(as_tuple=True)
        long = lambda t: t.to(torch.long)  # noqa: E731
        self.b, self.r, self.comp, self.pos = long(b), long(r), long(c), long(p)
        self.dclass = torch.zeros_like(self.b)
        self.score = s[b, r, c, p]
        self.parent = torch.full_like(self.b, -1)
        self.mode = torch.full_like(self.b, SEED)
        self.pending = self.comp >= self.comps.n_emb
        if len(self.b) > self.max_nodes:
            self._cap_seeds()

    def _cap_seeds(self):
        order = self.score.abs().argsort(descending=True)[: self.max_nodes]
        for name in ("b", "r", "comp", "pos", "dclass", "score", "parent", "mode", "pending"):
            setattr(self, name, getattr(self, name)[order])
        self.truncated = True

    def _add(
        self, parent_idx: Tensor, cand: Tensor, child_comp: Tensor, child_pos: Tensor, mode: Tensor
    ):
        """Append children ``cand[i, j]`` (score) of node ``parent_idx[i]`` whose
        component/position/mode are ``child_comp/child_pos/mode[i, j]``, pruned."""
        b, r = self.b[parent_idx], self.r[parent_idx]
        floor = self.min_score[b, r].clamp_min(TINY)[:, None]
        keep = cand.abs() >= floor
        if self.remainder is not None:
            drop = torch.where(keep, torch.zeros_like(cand), cand)
            Fk = self.remainder[1]
            bi = b[:, None].expand_as(cand)
            ri = r[:, None].expand_as(cand)
            Fk.index_put_(
                (bi.reshape(-1), ri.reshape(-1), child_comp.reshape(-1), child_pos.reshape(-1)),
                drop.reshape(-1),
                accumulate=True,
            )
        i, j = keep.nonzero(as_tuple=True)
        score = cand[i, j]
        room = self.max_nodes - len(self.b)
        if len(i) > room:
            order = score.abs().argsort(descending=True)
            cut, order = order[max(room, 0) :], order[: max(room, 0)]
            if self.remainder is not None:
                self.remainder[1].index_put_(
                    (b[i[cut]], r[i[cut]], child_comp[i[cut], j[cut]], child_pos[i[cut], j[cut]]),
                    score[cut],
                    accumulate=True,
                )
            i, j, score = i[order], j[order], score[order]
            self.truncated = True
        comp = child_comp[i, j]
        self.b = torch.cat([self.b, b[i]])
        self.r = torch.cat([self.r, r[i]])
        self.comp = torch.cat([self.comp, comp])
        self.pos = torch.cat([self.pos, child_pos[i, j]])
        self.dclass = torch.cat([self.dclass, torch.ones_like(comp)])
        self.score = torch.cat([self.score, score])
        self.parent = torch.cat([self.parent, parent_idx[i]])
        self.mode = torch.cat([self.mode, mode[i, j]])
        self.pending = torch.cat([self.pending, comp >= self.comps.n_emb])

    def _take(self, lo: int, hi: int) -> Tensor:
        """Pending nodes whose component lies in ``[lo, hi)``; marks them expanded."""
        sel = self.pending & (self.comp >= lo) & (self.comp < hi)
        idx = sel.nonzero(as_tuple=True)[0]
        self.pending[idx] = False
        return idx

    def _slices(self, idx: Tensor, width: int):
        """``idx`` in slices whose ``width`` candidates each fit the slice budget;
        none once the table is full (unless the remainder is kept: it needs them)."""
        per = max(1, self.slice_bytes // (CANDIDATE_BYTES * max(width, 1)))
        for k in range(0, len(idx), per):
            if len(self.b) >= self.max_nodes and self.remainder is None:
                self.truncated = True  # the rest stays unexpanded
                return
            yield idx[k : k + per]

    def expand_mlp(self, L: int, mops):
        """Expand the pending ``mlp_L`` nodes (the sweep's order: the MLP, then the heads)."""
        slot = self.comps.mlp_slot(L)
        for idx in self._slices(self._take(slot, slot + 1), mops.fac0.shape[1]):
            b, q, dc = self.b[idx], self.pos[idx], self.dclass[idx]
            fac = torch.where((dc == 0)[:, None], mops.fac0[b, :, q], mops.fack[b, :, q])  # [n, C]
            cand = self.score[idx, None] * fac
            C = fac.shape[1]
            self._add(
                idx,
                cand,
                torch.arange(C, device=cand.device).expand_as(cand),
                q[:, None].expand_as(cand),
                torch.full_like(cand, 3, dtype=torch.long),
            )

    def has_pending(self, L: int) -> bool:
        """Whether nodes at ``mlp_L`` or the heads of layer L wait to be expanded."""
        lo = self.comps.head_slot(L)
        hi = self.comps.mlp_slot(L) + 1
        return bool((self.pending & (self.comp >= lo) & (self.comp < hi)).any())

    def head_positions(self) -> Tensor:
        """Positions of the head nodes taken by :meth:`start_heads`."""
        return self.pos[self._heads]

    def start_heads(self, L: int):
        """Take the pending nodes at the heads of layer L; :meth:`expand_heads`
        expands them chunk by chunk of query positions."""
        slot = self.comps.head_slot(L)
        self._heads = self._take(slot, slot + self.comps.n_heads)

    def expand_heads(self, L: int, hops, ch):
        """Expand the taken head nodes whose position lies in the chunk ``ch``."""
        idx = self._heads
        if not len(idx):
            return
        idx = idx[(self.pos[idx] >= ch.q0) & (self.pos[idx] < ch.q1)]
        for part in self._slices(idx, 3 * len(self.comps) * ch.q1):
            self._expand_heads(L, hops, ch, part)

    def _expand_heads(self, L: int, hops, ch, idx: Tensor):
        dev = self.score.device
        slot = self.comps.head_slot(L)
        S1 = ch.q1
        b, q, dc, h = self.b[idx], self.pos[idx], self.dclass[idx], self.comp[idx] - slot
        qi = q - ch.q0
        f = torch.where((dc == 0)[:, None], hops.f0[b, h, q, :S1], hops.fk[b, h, q, :S1])  # [n, S1]
        xs = thr(self.score[idx, None] * f)
        n = xs.shape[0]
        cands, comps_, poss, modes = [], [], [], []
        rowsK = None if ch.kscale is None else ch.key_rows(b, h, qi).transpose(1, 2)  # [n, C, S1]
        rowsV = None if hops.Vn is None else hops.Vn.permute(0, 2, 1, 3)[b, h][..., :S1]
        for m, rows in ((0, rowsK), (2, rowsV)):  # children at the source position s
            if rows is None:
                continue
            cand = (xs[:, None, :] * rows).reshape(n, -1)  # [n, C*S1]
            C = rows.shape[1]
            cands.append(cand)
            comps_.append(torch.arange(C, device=dev).repeat_interleave(S1).expand(n, -1))
            poss.append(torch.arange(S1, device=dev).repeat(C).expand(n, -1))
            modes.append(torch.full_like(cand, m, dtype=torch.long))
        if ch.qscale is not None:  # children at the query position q
            rows = ch.query_rows(b, h, qi).transpose(1, 2)
            cand = (xs[:, None, :] * rows).sum(-1)
            cands.append(cand)
            comps_.append(torch.arange(cand.shape[1], device=dev).expand(n, -1))
            poss.append(q[:, None].expand_as(cand))
            modes.append(torch.full_like(cand, 1, dtype=torch.long))
        if cands:
            self._add(
                idx,
                torch.cat(cands, 1),
                torch.cat(comps_, 1),
                torch.cat(poss, 1),
                torch.cat(modes, 1),
            )

    def terminal_credit(self, S: int) -> Tensor:
        """Σ of complete path scores ending at each position → ``[B, R, S]``."""
        B, R = self.seeds.shape[:2]
        out = self.seeds.new_zeros(B, R, S)
        end = (self.comp < self.comps.n_emb).nonzero(as_tuple=True)[0]
        out.index_put_((self.b[end], self.r[end], self.pos[end]), self.score[end], accumulate=True)
        return out

    def top_paths(self, b: int, r: int, k: int, tokens: list[str], pos_total: float) -> list[Path]:
        """The ``k`` complete paths of prompt ``b``, root ``r`` with the largest ``|score|``."""
        end = ((self.comp < self.comps.n_emb) & (self.b == b) & (self.r == r)).nonzero(
            as_tuple=True
        )[0]
        if not len(end) or k == 0:
            return []
        top = end[self.score[end].abs().argsort(descending=True)[:k]].tolist()
        chains = [self._chain(node) for node in top]  # only these rows leave the tensors
        rows = sorted({i for c in chains for i in c})
        at = torch.tensor(rows, dtype=torch.long, device=self.comp.device)
        comp, pos, mode, score = (
            {i: v for i, v in zip(rows, t[at].tolist())}
            for t in (self.comp, self.pos, self.mode, self.score)
        )
        names = self.comps.names
        out = []
        for node, chain_nodes in zip(top, chains):
            hops = []
            for a, nxt in zip(chain_nodes, chain_nodes[1:] + [None]):
                hops.append((names[comp[a]], pos[a], MODES[mode[nxt]] if nxt is not None else None))
            text = "→".join(
                f"{n}[{m}]@{p}" if m in ("K", "Q", "V") else f"{n}@{p}" for n, p, m in hops
            )
            src = pos[node]
            out.append(
                Path(
                    chain=text,
                    score=score[node],
                    score_pct=percent_credit(score[node], pos_total),
                    source_pos=src,
                    source_token=tokens[src] if src < len(tokens) else "",
                    modes=[m for _, _, m in hops if m is not None],
                    depth=len(hops) - 1,
                    hops=hops,
                )
            )
        return out

    def _chain(self, node: int) -> list[int]:
        """The nodes from a seed down to ``node`` (at most two per layer)."""
        chain = []
        while node != -1:
            chain.append(node)
            node = int(self.parent[node])
        return chain[::-1]
