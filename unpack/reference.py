"""A deliberately plain implementation of docs/METHOD.md §3-7: loops over layers,
components, heads, positions and sources, one prompt at a time.

It shares nothing with the vectorized engine but the captured forward pass
(which §9 checks against the model separately). The tests use it as the
independent check of ``decompose``/``flow``/``paths``; ``unpack bench`` times it
as the naive per-component baseline. It is slow on purpose: do not use it for
real work.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

EPS = 1e-10
TINY = 1e-14


def _safe_denom(v: list[float], beta: float):
    T = sum(v)
    N = sum(abs(x) for x in v)
    if N < EPS:
        return None
    sign = 1.0 if T >= 0 else -1.0
    return sign * max(abs(T), beta * N)


def _qk(x, norm, sigma, h):
    """``γ ⊙ x / σ`` of head ``h``'s projection ``x [d]`` under a qk-norm (given its
    measured scale ``sigma``), ``x`` itself without one."""
    if norm is None:
        return x
    g = norm.weight if norm.weight.dim() == 1 else norm.weight[h]
    return g * x / sigma


def _rope(x, cos, sin, dim):
    """Rotate one vector ``x [d]`` with one position's ``cos, sin [dim]``."""
    if cos is None:
        return x
    half = dim // 2
    xr = x[:dim]
    rot = torch.cat((-xr[half:], xr[:half]))
    return torch.cat((xr * cos + rot * sin, x[dim:]))


class Reference:
    """Plain-loop Unpack on prompt ``b`` of a capture."""

    def __init__(self, cap, b: int, cfg, dtype=torch.float64):
        self.cap, self.b, self.cfg = cap, b, cfg
        self.spec, self.comps = cap.spec, cap.comps
        self.n = int(cap.lengths[b])
        self.dt = dtype
        self.layernorm = self.spec.ln_final.kind == "layer"
        n = self.n
        outs = [cap.embed[b, :n]] + ([cap.pos[b, :n]] if cap.pos is not None else [])
        for lc in cap.layers:
            outs += [lc.head_out[b, h, :n] for h in range(self.spec.n_heads)] + [lc.mlp_out[b, :n]]
        self.writers = [
            o.detach().to(dtype) for o in outs
        ]  # credited components, comps.names order
        self.chat = [self._center(w) for w in self.writers]

    def _center(self, v):
        return v - v.mean(-1, keepdim=True) if self.layernorm else v

    # ------------------------------------------------------------- seeds (§3)
    def seeds(self, target_id: int, distractor_id=None) -> list[float]:
        spec, t = self.spec, self.n - 1
        W_U = spec.W_U.detach().to(self.dt)
        u_mean = W_U[target_id] - W_U.mean(0)
        if self.cfg.seed == "metric" and distractor_id is not None:
            u = W_U[target_id] - W_U[distractor_id]
        else:
            u = u_mean
        gam = spec.ln_final.weight.detach().to(self.dt)
        sig = float(self.cap.sigma_final[self.b, t])
        d = gam * u / sig
        r = 1.0
        if self.cap.logits_raw_t is not None:  # final soft-cap: capped over uncapped metric
            other = distractor_id if self.cfg.seed == "metric" else None
            raw, capped = (
                self._metric(lg[self.b].to(self.dt), target_id, other)
                for lg in (self.cap.logits_raw_t, self.cap.logits_t)
            )
            r = capped / raw if raw != 0.0 else 1.0
        return [r * float(c[t] @ d) for c in self.chat]

    @staticmethod
    def _metric(logits, target_id, distractor_id) -> float:
        other = logits.mean() if distractor_id is None else logits[distractor_id]
        return float(logits[target_id] - other)

    def d_hat(self, target_id: int, distractor_id=None):
        W_U = self.spec.W_U.detach().to(self.dt)
        u = W_U[target_id] - (W_U[distractor_id] if distractor_id is not None else W_U.mean(0))
        gam = self.spec.ln_final.weight.detach().to(self.dt)
        d = gam * u / float(self.cap.sigma_final[self.b, self.n - 1])
        return self._center(d)

    # ------------------------------------------------------- scores (§4, §5)
    def attention_scores(self, L: int, d_hat):
        """Per-writer key/query/value scores and the source shares, as nested lists."""
        spec, cap, b, n, dt = self.spec, self.cap, self.b, self.n, self.dt
        lw, lc = spec.layers[L].cast(dt), cap.layers[L]
        G = spec.group_size
        Q, K, V = lc.Q[b, :, :n].to(dt), lc.K[b, :, :n].to(dt), lc.V[b, :, :n].to(dt)
        A = lc.A[b, :, :n, :n].to(dt)
        sig = lc.sigma_attn[b, :n].to(dt)
        sq = None if lc.sigma_q is None else lc.sigma_q[b, :, :n].to(dt)
        sk = None if lc.sigma_k is None else lc.sigma_k[b, :, :n].to(dt)
        gam = lw.ln_attn.weight
        cos = lc.cos[:n].to(dt) if lc.cos is not None else None
        sin = lc.sin[:n].to(dt) if lc.sin is not None else None
        rdim = lw.rotary.dim if lw.rotary is not None else 0
        scale = lw.attn_scale
        W = lw.window or n
        C = self.comps.n_writers_attn(L)
        H = spec.n_heads
        key = [[[[0.0] * n for _ in range(n)] for _ in range(H)] for _ in range(C)]
        query = [[[[0.0] * n for _ in range(n)] for _ in range(H)] for _ in range(C)]
        value = [[[0.0] * n for _ in range(H)] for _ in range(C)]
        for c in range(C):
            m = gam * self.chat[c] / sig[:, None]  # [n, D]
            for h in range(H):
                g = h // G
                kc = [
                    _rope(
                        _qk(m[s] @ lw.W_K[g], lw.k_norm, None if sk is None else sk[g, s], g),
                        None if cos is None else cos[s],
                        None if sin is None else sin[s],
                        rdim,
                    )
                    for s in range(n)
                ]
                qc = [
                    _rope(
                        _qk(m[q] @ lw.W_Q[h], lw.q_norm, None if sq is None else sq[h, q], h),
                        None if cos is None else cos[q],
                        None if sin is None else sin[q],
                        rdim,
                    )
                    for q in range(n)
                ]
                for q in range(n):
                    seen = range(max(0, q - W + 1), q + 1)  # the sources q attends to
                    r = [self._capped(lw, float(scale * (Q[h, q] @ K[g, s]))) for s in seen]
                    rawK = [r[i] * scale * float(Q[h, q] @ kc[s]) for i, s in enumerate(seen)]
                    rawQ = [r[i] * scale * float(qc[q] @ K[g, s]) for i, s in enumerate(seen)]
                    mk, mq = sum(rawK) / len(seen), sum(rawQ) / len(seen)
                    for i, s in enumerate(seen):
                        key[c][h][q][s] = rawK[i] - mk
                        query[c][h][q][s] = rawQ[i] - mq
                for s in range(n):
                    value[c][h][s] = float((m[s] @ lw.W_V[g]) @ V[g, s])
        share0 = [[[0.0] * n for _ in range(n)] for _ in range(H)]
        shareA = [[[0.0] * n for _ in range(n)] for _ in range(H)]
        # a head's part written at q: γ_post ⊙ A pv / σ_post[q] through a post-norm
        g_post = 1.0 if lw.ln_attn_post is None else lw.ln_attn_post.weight
        pv = [[g_post * (V[h // G, s] @ lw.W_O[h]) for s in range(n)] for h in range(H)]
        for q in range(n):
            o = sum(float(A[h, q, s]) * pv[h][s] for h in range(H) for s in range(n))
            onorm = max(float(o @ o), EPS)
            post = 1.0 if lw.ln_attn_post is None else float(lc.sigma_attn_post[b, q])
            for h in range(H):
                for s in range(n):
                    a = float(A[h, q, s])
                    share0[h][q][s] = a * float(self._center(pv[h][s]) @ d_hat) / post
                    shareA[h][q][s] = a * float(pv[h][s] @ o) / onorm
        return key, query, value, share0, shareA, A.tolist()

    @staticmethod
    def _capped(lw, t: float) -> float:
        """A writer's factor under attention-logit soft-capping: capped / uncapped logit."""
        if lw.softcap is None or t == 0.0:
            return 1.0
        return lw.softcap * math.tanh(t / lw.softcap) / t

    def mlp_rule_scores(self, L: int, d_hat):
        """``{rule: [c][q] scores}`` for depth0/aligned/weighted and ``l2``."""
        spec, cap, b, n, dt = self.spec, self.cap, self.b, self.n, self.dt
        lw, lc = spec.layers[L].cast(dt), cap.layers[L]
        mlp = lw.mlp
        a = lc.act[b, :n].to(dt)
        sig = lc.sigma_mlp[b, :n].to(dt)
        gam = lw.ln_mlp.weight
        C = self.comps.n_writers_mlp(L)
        # cell j writes g ⊙ a_j W_out[:, j] / σ_post[q] through a post-feedforward norm
        g = 1.0 if lw.ln_mlp_post is None else lw.ln_mlp_post.weight
        Wo = (g * mlp.W_out.T).T  # [D, F]
        h = a @ Wo.T
        out = {r: [[0.0] * n for _ in range(C)] for r in ("depth0", "aligned", "weighted", "l2")}
        safe = lambda x: torch.where(x.abs() < EPS, torch.full_like(x, EPS), x)  # noqa: E731
        for q in range(n):
            post = 1.0 if lw.ln_mlp_post is None else float(lc.sigma_mlp_post[b, q])
            w = {
                "depth0": a[q] * (self._center(Wo.T) @ d_hat) / post,
                "aligned": a[q] * (Wo.T @ h[q]) / max(float(h[q] @ h[q]), EPS),
                "weighted": a[q] / max(float(a[q].sum()), EPS),
            }
            for c in range(C):
                m = gam * self.chat[c][q] / sig[q]
                if mlp.gated:
                    kg, ku = mlp.W_gate @ m, mlp.W_up @ m
                    share = 0.5 * (kg / safe(lc.gate[b, q].to(dt)) + ku / safe(lc.up[b, q].to(dt)))
                    out["l2"][c][q] = float(torch.cat((kg, ku)).norm())
                else:
                    k = mlp.W_in @ m
                    share = k / safe(lc.pre[b, q].to(dt))
                    out["l2"][c][q] = float(k.norm())
                for r in ("depth0", "aligned", "weighted"):
                    out[r][c][q] = float((w[r] * share).sum())
        return out

    # ------------------------------------------------------------ sweep (§6)
    def run(
        self, F0_init: dict, with_paths: bool = False, path_min: float = 0.0, max_nodes: int = 10**6
    ):
        """``F0_init: {(component, position): credit}``. Returns token credit,
        flow ``{(c, q): x}``, edges ``{(parent, child, mode): w}`` and, if asked,
        the complete paths as ``[(chain_tuple, score)]`` found by recursion."""
        cfg, comps, n, H = self.cfg, self.comps, self.n, self.spec.n_heads
        wK, wQ, wV = cfg.w_K, cfg.w_Q, cfg.w_V
        N = len(comps)
        F0 = [[0.0] * n for _ in range(N)]
        Fk = [[0.0] * n for _ in range(N)]
        for (c, q), x in F0_init.items():
            F0[c][q] += x
        edges = defaultdict(float)
        self._ops = {}
        d_hat = self._d_hat
        for L in reversed(range(self.spec.n_layers)):
            mlp = self.mlp_rule_scores(L, d_hat)
            heads = self.attention_scores(L, d_hat)
            self._ops[L] = (mlp, heads)
            slot = comps.mlp_slot(L)
            for q in range(n):
                for depth, F in ((0, F0), (1, Fk)):
                    x = F[slot][q]
                    if abs(x) < TINY:
                        continue
                    for c, amt in self._mlp_children(mlp, q, depth, x):
                        Fk[c][q] += amt
                        edges[(slot, c, "MLP")] += amt
            for h in range(H):
                hs = comps.head_slot(L, h)
                for q in range(n):
                    for depth, F in ((0, F0), (1, Fk)):
                        x = F[hs][q]
                        if abs(x) < TINY:
                            continue
                        for c, s, mode, amt in self._head_children(
                            heads, h, q, depth, x, wK, wQ, wV
                        ):
                            Fk[c][s] += amt
                            edges[(hs, c, mode)] += amt
        credit = [sum(F0[c][s] + Fk[c][s] for c in range(comps.n_emb)) for s in range(n)]
        flow = {(c, q): F0[c][q] + Fk[c][q] for c in range(N) for q in range(n)}
        paths = None
        if with_paths:
            paths = []
            for (c, q), x in F0_init.items():
                if abs(x) < max(path_min, TINY):
                    continue
                self._dfs([(c, q, None)], x, 0, path_min, paths, max_nodes)
        return credit, flow, dict(edges), paths

    def _mlp_children(self, mlp, q, depth, x):
        chain = ["depth0", "aligned", "weighted", "l2"]
        start = "depth0" if depth == 0 else self.cfg.mlp_rule
        for rule in chain[chain.index(start) :]:
            v = [mlp[rule][c][q] for c in range(len(mlp[rule]))]
            if rule == "l2":
                tot = sum(v)
                if tot < EPS:
                    continue
                return [(c, x * v[c] / tot) for c in range(len(v))]
            den = _safe_denom(v, self.cfg.beta)
            if den is None:
                continue
            return [(c, x * v[c] / den) for c in range(len(v))]
        return [(0, x)]  # nothing applies: to the embedding at q

    def _head_children(self, heads, h, q, depth, x, wK, wQ, wV):
        key, query, value, share0, shareA, A = heads
        beta, n = self.cfg.beta, self.n
        if depth == 0:
            sh = share0[h][q]
        elif self.cfg.value_shares == "aligned":
            sh = shareA[h][q]
        else:
            sh = A[h][q]
        if depth == 0 or self.cfg.value_shares == "aligned":
            den = _safe_denom(sh, beta)
            f = [0.0] * n if den is None else [v / den for v in sh]
        else:
            tot = sum(sh)
            f = [v / tot for v in sh]
        out = []
        C = len(key)
        for s in range(n):
            xs = x * f[s]
            if abs(xs) < TINY:
                continue
            for mode, w, vec, at in (
                ("K", wK, [key[c][h][q][s] for c in range(C)], s),
                ("Q", wQ, [query[c][h][q][s] for c in range(C)], q),
                ("V", wV, [value[c][h][s] for c in range(C)], s),
            ):
                if w == 0:
                    continue
                den = _safe_denom(vec, beta)
                if den is None:
                    continue
                for c in range(C):
                    out.append((c, at, mode, w * xs * vec[c] / den))
        return out

    # ------------------------------------------------------------ paths (§7)
    def _dfs(self, chain, score, depth, path_min, out, max_nodes):
        if len(out) > max_nodes:
            raise RuntimeError("reference path enumeration exceeded its cap")
        c, q, _ = chain[-1]
        comps = self.comps
        if c < comps.n_emb:
            out.append((tuple(chain), score))
            return
        kind_layer = comps.names[c]
        L = int(kind_layer.split("_")[1])
        mlp, heads = self._ops[L]
        if kind_layer.startswith("mlp"):
            kids = [(cc, q, "MLP", amt) for cc, amt in self._mlp_children(mlp, q, depth, score)]
        else:
            h = c - comps.head_slot(L)
            merged = defaultdict(float)  # one hop per (child, position, mode)
            for cc, s, mode, amt in self._head_children(
                heads, h, q, depth, score, self.cfg.w_K, self.cfg.w_Q, self.cfg.w_V
            ):
                merged[(cc, s, mode)] += amt
            kids = [(cc, s, mode, amt) for (cc, s, mode), amt in merged.items()]
        for cc, s, mode, amt in kids:
            if abs(amt) < max(path_min, TINY):
                continue
            self._dfs(chain[:-1] + [(c, q, mode), (cc, s, None)], amt, 1, path_min, out, max_nodes)

    def trace(
        self,
        target_id: int,
        distractor_id=None,
        root=None,
        with_paths=False,
        path_min_frac=0.0,
        max_nodes=10**6,
    ):
        """Seeds or a root ``(component index, position)``, then the sweep."""
        self._d_hat = self.d_hat(target_id, distractor_id)
        if root is None:
            I = self.seeds(target_id, distractor_id)
            init = {(c, self.n - 1): x for c, x in enumerate(I)}
        else:
            init = {root: 1.0}
        mass = sum(abs(x) for x in init.values())
        return self.run(init, with_paths, path_min_frac * mass, max_nodes)
