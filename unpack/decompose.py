"""The Unpack decomposition, in the order of docs/METHOD.md: §3 seeds, §4
attention scores, §5 MLP scores, §6 the factors the sweep distributes credit with.

Shapes: ``B`` prompts, ``C`` eligible writers, ``H`` heads, ``S`` positions,
``D`` width, ``d`` head dim, ``F`` MLP width. Writers enter as ``ĉ`` (centered
for LayerNorm models); the marginal norm ``m(c)[s] = γ ⊙ ĉ[s] / σ(x[s])`` is
folded into the contractions: ``m(c)[s]·v = (ĉ[s]·(γ⊙v)) / σ[s]``.

The K and Q scores (``C·H·S²`` numbers per reader) are never held for a whole
layer: :class:`AttnScores` produces them a chunk of query positions at a time,
and the sweep and the path search consume each chunk before the next is made.
How the contractions are computed fast (fold, project, virtual weights, the
blocked layouts) is :mod:`unpack.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from .adapters.base import LayerWeights, ModelSpec
from .capture import Capture, LayerCapture, attention_logits, attention_probs, expand_kv, softcap
from .cost import chunk_rows, choose_mode, shape_of
from .kernels import (
    EngineOptions,
    VirtualWeights,
    fold,
    fold_per_source,
    per_position,
    project_writers,
    rotate_positions,
)

Tensor = torch.Tensor
EPS_DEN = 1e-10


# --------------------------------------------------------------------------- §3
def centered_writers(cap: Capture, writers: Tensor) -> Tensor:
    """``ĉ`` for every writer (§3): centered over D for LayerNorm models."""
    return cap.spec.ln_final.center(writers)


def writers_hat(cap: Capture) -> Tensor:
    """``ĉ`` of every credited writer ``[B, N, S, D]`` (the capture's buffer when it
    was made centered; no copy)."""
    return cap.writers if cap.centered else centered_writers(cap, cap.writers)


def unembed_direction(
    W_U: Tensor, W_U_mean: Tensor, tid: Tensor, did: Optional[Tensor] = None
) -> Tensor:
    """§3 ``u`` per prompt → ``[B, D]``: ``W_U[τ] − W_U[δ]`` where a distractor is
    given (``did >= 0``), else ``W_U[τ] − mean_v W_U[v]``. ``did``: ``[B]`` token
    ids, ``-1`` for none; ``None`` for no distractors at all."""
    ut = W_U[tid].to(W_U_mean.dtype)
    if did is None:
        return ut - W_U_mean
    ud = W_U[did.clamp_min(0)].to(W_U_mean.dtype)
    return torch.where((did >= 0)[:, None], ut - ud, ut - W_U_mean)


def target_direction(cap: Capture, u: Tensor) -> Tensor:
    """``d_t = γ_f ⊙ u / σ_f(resid_final[t])`` per prompt → ``[B, D]``."""
    B = u.shape[0]
    sig = cap.sigma_final[torch.arange(B, device=u.device), cap.t]
    return cap.spec.ln_final.weight.to(u.dtype) * u / sig[:, None]


def seeds(
    cap: Capture,
    chat: Tensor,
    W_U: Tensor,
    W_U_mean: Tensor,
    tid: Tensor,
    did: Optional[Tensor],
    seed: str = "importance",
) -> Tensor:
    """§3 seeds ``I_c = ĉ[t] · d_t`` for every writer in ``chat`` → ``[B, N]``.

    ``seed="importance"`` (the paper's): ``u = W_U[τ] − mean_v W_U[v]`` even when a
    distractor is given; ``seed="metric"``: the distractor's direction where there
    is one (the seeds then add up to the logit difference, with the bias parts),
    else the same as importance."""
    did = did if seed == "metric" else None
    u = unembed_direction(W_U, W_U_mean, tid, did)
    dirn = target_direction(cap, u)  # [B, D]
    B = tid.shape[0]
    c_t = chat[torch.arange(B, device=chat.device), :, cap.t]  # [B, N, D]
    I = torch.einsum("bnD,bD->bn", c_t, dirn)
    r = capped_seed_ratio(cap, tid, did)
    return I if r is None else I * r[:, None]


def metric_of(logits: Tensor, tid: Tensor, did: Optional[Tensor]) -> Tensor:
    """``[B]``: ``logits[τ] − logits[δ]`` where a distractor is given (``did >= 0``),
    else ``logits[τ] − mean_v logits[v]`` (§3)."""
    ar = torch.arange(logits.shape[0], device=logits.device)
    other = logits.mean(-1)
    if did is not None:
        other = torch.where(did >= 0, logits[ar, did.clamp_min(0)], other)
    return logits[ar, tid] - other


def capped_seed_ratio(cap: Capture, tid: Tensor, did: Optional[Tensor]) -> Optional[Tensor]:
    """``[B]``: the final soft-cap's ratio, capped over uncapped metric (§3), the
    factor every seed takes so that the seeds add up to the capped metric; None
    without a final soft-cap (1 where the uncapped metric is 0)."""
    if cap.logits_raw_t is None:
        return None
    raw, capped = metric_of(cap.logits_raw_t, tid, did), metric_of(cap.logits_t, tid, did)
    small = raw.abs() < 1e-30
    return torch.where(small, torch.ones_like(raw), capped / torch.where(small, 1.0, raw))


# --------------------------------------------------------------------------- §4
def _gamma_weights(lw: LayerWeights) -> tuple[Tensor, Tensor]:
    """``(Γ W_K, Γ W_Q)``: the attention norm's γ folded into the weights (m·W = (ĉ/σ)·(γ⊙W)),
    and a qk-norm's ``γ_k`` / ``γ_q`` over each head's features."""
    gam = lw.ln_attn.weight
    # multiplied along each head's rows as they lie in memory ([H, d, D] views):
    # a fused per-head QKV matrix is then read in order, not transposed
    WK, WQ = (
        (lw.W_K.transpose(1, 2) * gam).transpose(1, 2),
        (lw.W_Q.transpose(1, 2) * gam).transpose(1, 2),
    )
    if lw.k_norm is not None:
        WK = WK * lw.k_norm.gamma(WK.shape[0])[:, None, :]
    if lw.q_norm is not None:
        WQ = WQ * lw.q_norm.gamma(WQ.shape[0])[:, None, :]
    return WK, WQ


def _inverse_scales(spec: ModelSpec, lc: LayerCapture) -> tuple[Tensor, Tensor]:
    """``(1/σ_k, 1/σ_q)``, each ``[B, H or 1, S]``: the per-source factor of a
    writer's key part (the attention norm's ``1/σ[s]``, times ``1/σ_k[g(h), s]``
    under a qk-norm) and the per-query factor of its query part (§4)."""
    inv = 1.0 / lc.sigma_attn[:, None]
    ik = inv if lc.sigma_k is None else inv / expand_kv(lc.sigma_k, spec)
    iq = inv if lc.sigma_q is None else inv / lc.sigma_q
    return ik, iq


def capped_ratio(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture) -> Optional[Tensor]:
    """``[B, H, S, S]``: soft-capped over uncapped attention logits (1 where a logit
    is 0), the factor every writer's K and Q score takes under a soft-cap (§4);
    None without one."""
    if lw.softcap is None:
        return None
    t = attention_logits(spec, lw, lc.Q, lc.K)
    small = t.abs() < 1e-30
    return torch.where(
        small, torch.ones_like(t), softcap(t, lw.softcap) / torch.where(small, 1.0, t)
    )


def causal_center(raw: Tensor, q0: int, sdim: int, window: Optional[int] = None) -> Tensor:
    """§4 centering, in place, of a chunk of scores whose query positions are
    ``q0, q0+1, ...`` along dim ``3 - (sdim == 3)`` and source positions ``0 .. S1-1``
    along ``sdim``: ``raw[q, s] − mean_{s' <= q} raw[q, s']``, zero for ``s > q``
    (with a sliding ``window``: over the sources ``q − window < s' <= q`` the query
    sees, zero outside them). Layouts: K chunks ``[B, H, Qc, S1, C]``
    (``sdim=3``), Q chunks ``[B, H, S1, Qc, C]`` (``sdim=2``)."""
    qdim = 2 if sdim == 3 else 3
    Qc = raw.shape[qdim]
    q = torch.arange(q0, q0 + Qc, device=raw.device)
    if window is not None:
        return _window_center(raw, q, sdim, qdim, window)
    tri = q[None, :] >= q[:, None]  # [s - q0, q - q0]: s <= q
    if sdim == 3:
        tri = tri.T  # [q - q0, s - q0]
    tri = tri[..., None].to(raw.dtype)
    block = raw.narrow(sdim, q0, Qc)  # sources inside the chunk: zero those after q
    block.mul_(tri)
    count = (q + 1).to(raw.dtype)
    count = count[:, None, None] if qdim == 2 else count[:, None]
    raw.sub_(raw.sum(sdim, keepdim=True) / count)
    block.mul_(tri)
    return raw


def _window_center(raw: Tensor, q: Tensor, sdim: int, qdim: int, window: int) -> Tensor:
    """:func:`causal_center` over each query's window ``q − window < s <= q``."""
    s = torch.arange(raw.shape[sdim], device=raw.device)
    vis = (s[None, :] <= q[:, None]) & (s[None, :] > q[:, None] - window)  # [Qc, S1]
    if sdim == 2:
        vis = vis.T  # [S1, Qc]
    vis = vis[..., None].to(raw.dtype)
    count = (q + 1).clamp_max(window).to(raw.dtype)
    count = count[:, None, None] if qdim == 2 else count[:, None]
    raw.mul_(vis)
    raw.sub_(raw.sum(sdim, keepdim=True) / count)
    return raw.mul_(vis)


class AttnScores:
    """§4 raw K and Q scores of one attention reader, a chunk of query positions at a
    time, writers last (so that every sum over writers is contiguous):

    * ``key(q0, q1)``   → ``[B, H, Qc, S1, C]``: ``key_c[h, q, s]``
    * ``query(q0, q1)`` → ``[B, H, S1, Qc, C]``: ``query_c[h, q, s]`` (sources first)

    for the query positions ``q0 .. q1-1`` (``Qc`` of them) and the sources
    ``0 .. q1-1`` (``S1 = q1``), centered over ``s' <= q`` and zero for ``s > q``.

    ``chat [B, C, S, D]``: the eligible writers ``ĉ``. ``virtual=(comps, z, vws)``
    (mode "virtual" only): the component table, every layer's mixed values
    ``Z [B, L, H, S, d]``, and the :class:`VirtualWeights`."""

    @torch.no_grad()
    def __init__(
        self,
        spec: ModelSpec,
        lw: LayerWeights,
        lc: LayerCapture,
        chat: Tensor,
        cos: Optional[Tensor],
        sin: Optional[Tensor],
        mode: str,
        virtual=None,
    ):
        if mode not in ("fold", "project", "virtual"):
            raise ValueError(f"unknown K/Q contraction {mode!r}; use fold, project or virtual")
        if mode == "virtual" and virtual is None:
            mode = "project"  # the same numbers without the factored head writers
        if mode == "virtual" and any(w.ln_attn_post is not None for w in spec.layers):
            mode = "project"  # a head writer's output is rescaled per position by its post-norm
        self.spec, self.lw, self.lc, self.chat, self.mode = spec, lw, lc, chat, mode
        self.cos, self.sin, self.rotary = cos, sin, lw.rotary
        self.Kx = expand_kv(lc.K, spec)  # [B, H, S, d]
        self.inv_k, self.inv_q = _inverse_scales(spec, lc)
        self.ratio = capped_ratio(spec, lw, lc)
        B, C, S, D = chat.shape
        H, Hkv, d = spec.n_heads, spec.n_kv_heads, spec.d_head
        self.W_K, self.W_Q = _gamma_weights(lw)
        if mode == "fold" and self.rotary is None:
            # Q[h,q]·(m W_K) = m·(γ ⊙ W_K Q[h,q]);  (m W_Q)·K[s] = m·(γ ⊙ W_Q K[s])
            self.uK = torch.einsum("bhqe,hDe->bhqD", lc.Q, expand_kv(self.W_K, spec, 0))
            self.uQ = torch.einsum("bhse,hDe->bhsD", self.Kx, self.W_Q)
            return
        if mode == "fold":
            return
        # every writer in head space with 1/σ[s] applied, laid out [B, S, C, Hkv + H, d]:
        # a head's d columns over (source, writer) rows are one matrix as it lies
        Wkq = torch.cat(
            [self.W_K.permute(1, 0, 2).reshape(D, -1), self.W_Q.permute(1, 0, 2).reshape(D, -1)], 1
        )  # Γ [W_K | W_Q]: [D, P]
        heads = None
        if mode == "virtual" and lc.L > 0:  # head writers through their virtual weights
            comps, Z, vws = virtual
            heads = (comps, Z, vws.get(lc.L, Wkq), lc.L)
        proj = project_writers(chat, Wkq, 1.0 / lc.sigma_attn, heads)
        proj = proj.view(B, S, C, Hkv + H, d)
        if lc.sigma_k is not None:
            proj[:, :, :, :Hkv].div_(lc.sigma_k.transpose(1, 2)[:, :, None, :, None])
        if lc.sigma_q is not None:
            proj[:, :, :, Hkv:].div_(lc.sigma_q.transpose(1, 2)[:, :, None, :, None])
        if self.rotary is not None:
            rotate_positions(proj, cos, sin, self.rotary.dim)
        self.proj = proj

    @property
    def kcT(self) -> Tensor:
        """The key heads' projected writers as ``[B, Hkv, d, S, C]`` (a view)."""
        return self.proj[:, :, :, : self.spec.n_kv_heads].permute(0, 3, 4, 1, 2)

    @property
    def qcT(self) -> Tensor:
        """The query heads' projected writers as ``[B, H, d, S, C]`` (a view)."""
        return self.proj[:, :, :, self.spec.n_kv_heads :].permute(0, 3, 4, 1, 2)

    def projected(self, g: int, s0: int, s1: int) -> Tensor:
        """Head ``g`` of the projected writers (``g < Hkv``: a key head, else query
        head ``g − Hkv``) at positions ``s0 .. s1-1`` → ``[(s1 − s0)·C, d]``, rows
        ``(s, c)``: a view with leading dimension ``P``."""
        C, d = self.proj.shape[2], self.proj.shape[-1]
        return self.proj[:, s0:s1, :, g].reshape(-1, (s1 - s0) * C, d)

    @torch.no_grad()
    def raw_key(self, q0: int, q1: int, s1: int, causal: bool = False) -> Tensor:
        """``rawK_c[h,q,s]`` for ``q0 <= q < q1``, ``s < s1``, uncentered → ``[B,H,Qc,s1,C]``;
        ``causal``: the pairs with ``s > q`` may be left zero (they are never used)."""
        spec, lc = self.spec, self.lc
        B, C, Qc = self.chat.shape[0], self.chat.shape[1], q1 - q0
        H, Hkv = spec.n_heads, spec.n_kv_heads
        if self.mode != "fold":
            G = spec.group_size
            Qs = lc.Q[:, :, q0:q1] * self.lw.attn_scale  # [B, H, Qc, d]
            raw = Qs.new_empty(B, H, Qc, s1, C)
            for g in range(Hkv):
                kc = self.projected(g, 0, s1)  # [B, s1·C, d]
                for b in range(B):
                    torch.mm(
                        Qs[b, g * G : (g + 1) * G].reshape(G * Qc, -1),
                        kc[b].T,
                        out=raw[b, g * G : (g + 1) * G].view(G * Qc, s1 * C),
                    )
        else:
            ch = self.chat[:, :, :s1]
            inv = self.lw.attn_scale * self.inv_k[:, :, None, :s1, None]
            if self.rotary is None:
                raw = fold(self.uK[:, :, q0:q1], ch, inv, q0, True, 4 if causal else 1)
            else:
                # Q[h,q]·R_s(m W_K) = m·(W_K R_s^T Q[h,q]); R_s^T rotates by -θ_s
                Qr = self.rotary.apply(
                    lc.Q[:, :, q0:q1, None, :].expand(-1, -1, -1, s1, -1),
                    self.cos[:s1],
                    -self.sin[:s1],
                )
                u = torch.einsum("bhqse,hDe->bhqsD", Qr, expand_kv(self.W_K, spec, 0))
                raw = fold_per_source(u, ch, inv)
        if self.ratio is not None:
            raw.mul_(self.ratio[:, :, q0:q1, :s1, None])
        return raw

    @torch.no_grad()
    def raw_query(self, q0: int, q1: int, s1: int, causal: bool = False) -> Tensor:
        """``rawQ_c[h,q,s]`` for ``q0 <= q < q1``, ``s < s1``, uncentered → ``[B,H,s1,Qc,C]``;
        ``causal``: the pairs with ``s > q`` may be left zero (they are never used)."""
        spec = self.spec
        B, C, Qc = self.chat.shape[0], self.chat.shape[1], q1 - q0
        if self.mode != "fold":
            H, Hkv = spec.n_heads, spec.n_kv_heads
            Ks = self.Kx[:, :, :s1] * self.lw.attn_scale  # [B, H, s1, d]
            raw = Ks.new_empty(B, H, s1, Qc, C)
            for h in range(H):
                qc = self.projected(Hkv + h, q0, q1)  # [B, Qc·C, d]
                for b in range(B):
                    torch.mm(Ks[b, h], qc[b].T, out=raw[b, h].view(s1, Qc * C))
        else:
            ch = self.chat[:, :, q0:q1]
            inv = self.lw.attn_scale * self.inv_q[:, :, None, q0:q1, None]
            if self.rotary is None:
                raw = fold(self.uQ[:, :, :s1], ch, inv, q0, False, 4 if causal else 1)
            else:
                # R_q(m W_Q)·K[s] = m·(W_Q R_q^T K[s])
                Kr = self.rotary.apply(
                    self.Kx[:, :, None, :s1, :].expand(-1, -1, Qc, -1, -1),
                    self.cos[q0:q1, None],
                    -self.sin[q0:q1, None],
                )
                u = torch.einsum("bhqse,hDe->bhqsD", Kr, self.W_Q)
                raw = fold_per_source(u.transpose(2, 3), ch, inv)
        if self.ratio is not None:
            raw.mul_(self.ratio[:, :, q0:q1, :s1].transpose(-1, -2)[..., None])
        return raw

    def key(self, q0: int, q1: int) -> Tensor:
        """``key_c[h,q,s]`` (§4): ``rawK_c`` minus its mean over ``s' <= q`` (over the
        window under sliding-window attention) → ``[B,H,Qc,S1,C]``."""
        return causal_center(
            self.raw_key(q0, q1, q1, causal=True), q0, sdim=3, window=self.lw.window
        )

    def query(self, q0: int, q1: int) -> Tensor:
        """``query_c[h,q,s]`` (§4): ``rawQ_c`` minus its mean over ``s' <= q`` (over the
        window) → ``[B,H,S1,Qc,C]``."""
        return causal_center(
            self.raw_query(q0, q1, q1, causal=True), q0, sdim=2, window=self.lw.window
        )


def score_mode(
    spec: ModelSpec, B: int, S: int, L: Optional[int] = None, opts: Optional[EngineOptions] = None
) -> str:
    """The K/Q contraction the engine uses for reader layer ``L`` (default: the last)."""
    opts = opts or EngineOptions()
    if opts.mode is not None:
        return opts.mode
    shape = shape_of(spec)
    L = spec.n_layers - 1 if L is None else L
    cached = opts.vws is not None and opts.vws.cached
    return choose_mode(
        shape, L, B, S, cached, opts.max_proj_bytes, chunk_elements=opts.chunk_elements
    )


def raw_key_scores(
    spec: ModelSpec,
    lw: LayerWeights,
    lc: LayerCapture,
    chat: Tensor,
    cos: Optional[Tensor],
    sin: Optional[Tensor],
    mode: Optional[str] = None,
) -> Tensor:
    """``rawK_c[h,q,s] = scale · Q[h,q] · RoPE_s(m(c)[s] W_K[g(h)])`` → ``[B,C,H,S,S]``
    for every writer in ``chat``, all pairs, uncentered (a whole layer: for checks)."""
    S = chat.shape[2]
    mode = mode or score_mode(spec, chat.shape[0], S, lc.L)
    return AttnScores(spec, lw, lc, chat, cos, sin, mode).raw_key(0, S, S).permute(0, 4, 1, 2, 3)


def raw_query_scores(
    spec: ModelSpec,
    lw: LayerWeights,
    lc: LayerCapture,
    chat: Tensor,
    cos: Optional[Tensor],
    sin: Optional[Tensor],
    mode: Optional[str] = None,
) -> Tensor:
    """``rawQ_c[h,q,s] = scale · RoPE_q(m(c)[q] W_Q[h]) · K[g(h),s]`` → ``[B,C,H,S,S]``, uncentered."""
    S = chat.shape[2]
    mode = mode or score_mode(spec, chat.shape[0], S, lc.L)
    return AttnScores(spec, lw, lc, chat, cos, sin, mode).raw_query(0, S, S).permute(0, 4, 1, 3, 2)


def value_scores(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture, chat: Tensor) -> Tensor:
    """``value_c[h,s] = (m(c)[s] W_V[g(h)]) · V[g(h),s]`` → ``[B,C,H,S]``."""
    gam = lw.ln_attn.weight
    S = chat.shape[2]
    if S <= spec.d_head:  # γ on whichever is smaller: [G, S, D] or the weights [G, D, d]
        WVV = torch.einsum("bgse,gDe->bgsD", lc.V, lw.W_V).mul_(gam)
    else:
        WVV = torch.einsum("bgse,gDe->bgsD", lc.V, lw.W_V * gam[:, None])
    val = per_position(chat, WVV.transpose(1, 2))  # [B, C, S, G]
    val = val.permute(0, 1, 3, 2) / lc.sigma_attn[:, None, None, :]
    return expand_kv(val, spec, 2)


def projected_values(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture) -> Tensor:
    """``pv[h,s] = V[g(h),s] · W_O[h]`` (no ``b_O``) → ``[B,H,S,D]``."""
    return torch.einsum("bhse,heD->bhsD", expand_kv(lc.V, spec), lw.W_O)


def value_shares(
    lc: LayerCapture, A: Tensor, pv: Tensor, d_hat: Tensor, post=None
) -> tuple[Tensor, Tensor]:
    """``(share0, shareA)``, each ``[B,H,S,S]``: depth-0 shares ``A·(p̂v·d_t)`` and
    aligned shares ``A·(pv·o[q]) / max(‖o[q]‖², 1e-10)`` with ``o[q] = Σ_h Σ_s A pv``.
    Through a post-attention norm ``post`` the parts written at ``q`` are
    ``γ ⊙ A pv / σ_post[q]``: ``pv`` and ``o`` take ``γ``, ``share0`` the ``1/σ_post[q]``
    (in ``shareA`` it cancels)."""
    o = lc.attn_out  # [B, S, D] = Σ_h Σ_s A pv
    if post is not None:
        pv, o = pv * post.weight, o * post.weight
    share0 = A * torch.einsum("bhsD,bD->bhs", pv, d_hat)[:, :, None, :]
    if post is not None:
        share0 = share0 / lc.sigma_attn_post[:, None, :, None]
    onorm = o.pow(2).sum(-1).clamp_min(EPS_DEN)  # [B, S]
    shareA = A * torch.einsum("bhsD,bqD->bhqs", pv, o) / onorm[:, None, :, None]
    return share0, shareA


# --------------------------------------------------------------------------- §5
def _safe(x: Tensor) -> Tensor:
    return torch.where(x.abs() < EPS_DEN, torch.full_like(x, EPS_DEN), x)


def mlp_cell_weights(
    lw: LayerWeights, a: Tensor, h: Tensor, d_hat: Tensor, sigma_post: Optional[Tensor] = None
) -> dict[str, Tensor]:
    """Cell weights ``w_j`` of the three weighted rules, each ``[B,S,F]``, from the
    cells ``a [B,S,F]`` and ``h = Σ_j a_j W_out[:, j]`` (no bias, as captured).
    Through a post-feedforward norm a cell writes ``γ ⊙ a_j W_out[:, j] / σ_post[q]``:
    ``W_out`` takes ``γ`` and depth0 the ``1/σ_post[q]`` (§5)."""
    W_out = lw.mlp.W_out  # [D, F]
    post = lw.ln_mlp_post
    hw = h
    if post is not None:  # (γ d)·W_j and (γ h)·(γ W_j)
        d_hat, h, hw = d_hat * post.weight, h * post.weight, h * post.weight.pow(2)
    both = torch.cat([d_hat[:, None], hw], 1) @ W_out  # one pass over W_out: [B, 1+S, F]
    depth0 = a * both[:, :1]
    return {
        "depth0": depth0 if post is None else depth0 / sigma_post[:, :, None],
        "aligned": a * both[:, 1:] / h.pow(2).sum(-1, keepdim=True).clamp_min(EPS_DEN),
        "weighted": a / a.sum(-1, keepdim=True).clamp_min(EPS_DEN),
    }


def mlp_score_vectors(lw: LayerWeights, cells, w: Tensor) -> Tensor:
    """``Σ_j (w_j / pre_j) W_in[j]`` (gated: the ½(gate + up) share) → ``[..., B,S,D]``,
    so that ``score_c[q] = m(c)[q] · vec[q]``; ``cells = (a, pre, gate, up)``; ``w``
    may hold several rules stacked in front."""
    mlp = lw.mlp
    _, pre, gate, up = cells
    if mlp.gated:
        return 0.5 * ((w / _safe(gate)) @ mlp.W_gate + (w / _safe(up)) @ mlp.W_up)
    return (w / _safe(pre)) @ mlp.W_in


def mlp_scores(lw: LayerWeights, lc: LayerCapture, chat: Tensor, vec: Tensor) -> Tensor:
    """``score_c[q] = m(c)[q] · vec[q]`` → ``[..., B,C,S]`` for ``vec [..., B,S,D]``
    (several rules may be stacked in front)."""
    lead = vec.shape[:-3]
    v = (vec * lw.ln_mlp.weight).reshape(-1, *vec.shape[-3:]).permute(1, 2, 0, 3)  # [B, S, K, D]
    sc = per_position(chat, v) / lc.sigma_mlp[:, None, :, None]  # [B, C, S, K]
    return sc.permute(3, 0, 1, 2).reshape(*lead, *sc.shape[:3])


def mlp_l2(lw: LayerWeights, lc: LayerCapture, chat: Tensor, max_elements: int = 1 << 24) -> Tensor:
    """``l2_c[q] = ‖m(c)[q] · W_in^T‖`` (gated: over the concatenated gate and up
    parts), a block of writers at a time (the parts are ``[B, C, S, F]``)."""
    mlp = lw.mlp
    mats = (mlp.W_gate, mlp.W_up) if mlp.gated else (mlp.W_in,)
    B, C, S, _ = chat.shape
    step = max(1, max_elements // max(B * S * mats[0].shape[0], 1))
    out = []
    for c0 in range(0, C, step):
        m = lw.ln_mlp.marginal_norm(chat[:, c0 : c0 + step], lc.sigma_mlp)
        out.append(torch.sqrt(sum((m @ W.T).pow(2).sum(-1) for W in mats)))
    return torch.cat(out, 1)


# --------------------------------------------------------------------------- §6
def safe_denom(v: Tensor, beta: float, dim: int) -> tuple[Tensor, Tensor]:
    """§6 ``safe_denom``: ``(den, valid)`` with ``den = sign(T)·max(|T|, β·N)``,
    ``T = Σv``, ``N = Σ|v|`` (``T >= 0`` counts positive); ``valid`` is False where
    ``N < 1e-10`` (there the credit is dropped) and ``den`` is 1 there."""
    return denominator(v.sum(dim), v.abs().sum(dim), beta)


def denominator(T: Tensor, N: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """:func:`safe_denom` from the two sums ``T = Σv``, ``N = Σ|v|``."""
    valid = N >= EPS_DEN
    den = torch.where(T >= 0, 1.0, -1.0).to(T.dtype) * torch.maximum(T.abs(), beta * N)
    return torch.where(valid, den, torch.ones_like(den)), valid


def normalize(v: Tensor, beta: float, dim: int) -> Tensor:
    """``v / safe_denom(v)`` along ``dim``, zero where the denominator vanishes."""
    den, valid = safe_denom(v, beta, dim)
    return v / den.unsqueeze(dim) * valid.unsqueeze(dim)


def inverse_denom(v: Tensor, beta: float, dim: int, weight: float = 1.0) -> Tensor:
    """``weight / safe_denom(v)`` along ``dim``, zero where the denominator vanishes."""
    den, valid = safe_denom(v, beta, dim)
    return weight * valid.to(v.dtype) / den


def weighted_sum(x: Tensor, w: Tensor, dim: int, rows: int) -> Tensor:
    """``Σ`` over ``dim`` of ``x · w`` (``w`` broadcast to ``x``), ``rows`` slices of
    ``dim`` at a time, so that the product is never made for the whole of ``x``: each
    slice's product is summed while it is in cache (one slice: accumulated in place)."""
    n = x.shape[dim]
    out = None
    for a in range(0, n, rows):
        k = min(rows, n - a)
        xs, ws = x.narrow(dim, a, k), w.narrow(dim, a, k)
        if k == 1:
            xs, ws = xs.squeeze(dim), ws.squeeze(dim)
            out = xs * ws if out is None else out.addcmul_(xs, ws)
        else:
            part = (xs * ws).sum(dim)
            out = part if out is None else out.add_(part)
    return out


@dataclass
class HeadChunk:
    """The K and Q factors of query positions ``q0..q1-1`` (sources ``0..q1-1``):
    the centered scores and, per (h, q, s), ``w / safe_denom`` over the writers
    (zero where the credit is dropped). ``Kn = key · kscale`` is what the credit
    is distributed with; it is formed only where a consumer needs it."""

    q0: int
    q1: int
    key: Optional[Tensor]  # [B, H, Qc, S1, C]
    kscale: Optional[Tensor]  # [B, H, Qc, S1]
    query: Optional[Tensor]  # [B, H, S1, Qc, C]
    qscale: Optional[Tensor]  # [B, H, S1, Qc]

    @property
    def Kn(self) -> Optional[Tensor]:
        """``[B, H, Qc, S1, C]``: ``w_K · key_c / safe_denom``."""
        return None if self.key is None else self.key * self.kscale[..., None]

    @property
    def Qn(self) -> Optional[Tensor]:
        """``[B, H, S1, Qc, C]``: ``w_Q · query_c / safe_denom``."""
        return None if self.query is None else self.query * self.qscale[..., None]

    def key_credit(self, x: Tensor) -> Tensor:
        """The K branch (§6) of credit ``x [B, R, H, Qc, S1]``: to each writer at the
        source, ``Σ_q x · kscale · key_c`` → ``[B, R, H, S1, C]``."""
        y = x * self.kscale[:, None]
        return torch.stack(
            [weighted_sum(self.key, y[:, r, ..., None], 2, 1) for r in range(y.shape[1])], 1
        )

    def query_credit(self, x: Tensor) -> Tensor:
        """The Q branch (§6): to each writer at the query, ``Σ_s x · qscale · query_c``
        → ``[B, R, H, Qc, C]``."""
        y = (x * self.qscale.transpose(-1, -2)[:, None]).transpose(-1, -2)  # [B, R, H, S1, Qc]
        return torch.stack(
            [weighted_sum(self.query, y[:, r, ..., None], 2, 16) for r in range(y.shape[1])], 1
        )

    def key_rows(self, b: Tensor, h: Tensor, qi: Tensor) -> Tensor:
        """``key_c · kscale`` of (prompt, head, query-in-chunk) triples → ``[n, S1, C]``."""
        return self.key[b, h, qi] * self.kscale[b, h, qi][..., None]

    def query_rows(self, b: Tensor, h: Tensor, qi: Tensor) -> Tensor:
        """``query_c · qscale`` of the triples → ``[n, S1, C]``."""
        return self.query[b, h, :, qi] * self.qscale[b, h, :, qi][..., None]


@dataclass
class HeadOps:
    """Everything the sweep and the paths need for the heads of one layer, per unit
    of credit: source splits and writer shares already divided by their
    denominators and multiplied by the branch weights (zero where dropped). The
    K and Q factors come a chunk of query positions at a time from :meth:`chunks`."""

    f0: Tensor  # [B,H,Q,S] depth-0 source split
    fk: Tensor  # [B,H,Q,S] depth>=1 source split
    Vn: Optional[Tensor]  # [B,C,H,S]    w_V · value_c / safe_denom
    C: int
    scores: Optional[AttnScores]
    rows: int  # query positions per chunk
    w_K: float
    w_Q: float
    beta: float
    fused: Optional[object] = None  # unpack.fused.FusedKQ, when the fused path is on

    def chunks(self, q_lo: int = 0, q_hi: Optional[int] = None) -> Iterator[HeadChunk]:
        """The chunks of query positions ``q_lo .. q_hi-1`` (default: all); the
        sweep leaves out the positions where no head of the layer holds credit."""
        S = self.f0.shape[-1] if q_hi is None else q_hi
        for q0 in range(q_lo, S, self.rows):
            q1 = min(S, q0 + self.rows)
            if self.fused is not None:
                yield self.fused.chunk(q0, q1)
                continue
            key = query = ks = qs = None
            if self.w_K:
                key = self.scores.key(q0, q1)
                ks = inverse_denom(key, self.beta, -1, self.w_K)
            if self.w_Q:
                query = self.scores.query(q0, q1)
                qs = inverse_denom(query, self.beta, -1, self.w_Q)
            yield HeadChunk(q0, q1, key, ks, query, qs)


@dataclass
class MLPOps:
    fac0: Tensor  # [B,C,S] share of each writer per unit of depth-0 credit at q
    fack: Tensor  # [B,C,S] the same at depth >= 1


def head_ops(
    cap: Capture,
    L: int,
    chat: Tensor,
    d_hat: Tensor,
    cfg,
    opts: Optional[EngineOptions] = None,
    lw: Optional[LayerWeights] = None,
) -> HeadOps:
    """§4 scores of layer L turned into the §6 distribution factors (``lw``: the
    layer's weights in the math dtype, when the caller already cast them)."""
    opts = opts or EngineOptions()
    spec = cap.spec
    lc = cap.layers[L]
    lw = lw or lc.weights()
    C = cap.comps.n_writers_attn(L)
    ch = chat[:, :C]
    A = attention_probs(spec, lw, lc.Q, lc.K)
    pv = projected_values(spec, lw, lc)
    share0, shareA = value_shares(lc, A, pv, d_hat, lw.ln_attn_post)
    del pv
    f0 = normalize(share0, cfg.beta, -1)
    if cfg.value_shares == "aligned":
        fk = normalize(shareA, cfg.beta, -1)
    else:
        fk = A / A.sum(-1, keepdim=True)
    del share0, shareA, A
    Vn = cfg.w_V * normalize(value_scores(spec, lw, lc, ch), cfg.beta, 1) if cfg.w_V else None
    B, S = cap.input_ids.shape
    scores, rows = None, S
    if cfg.w_K or cfg.w_Q:
        mode = score_mode(spec, B, S, L, opts)
        virtual = (
            (cap.comps, cap.Z, opts.vws or VirtualWeights(spec, cap.dtype, budget_bytes=0))
            if mode == "virtual"
            else None
        )
        scores = AttnScores(spec, lw, lc, ch, lc.cos, lc.sin, mode, virtual)
        rows = chunk_rows(shape_of(spec), L, B, S, mode, opts.chunk_elements)
    return HeadOps(f0, fk, Vn, C, scores, rows, cfg.w_K, cfg.w_Q, cfg.beta)


_CHAIN = ("depth0", "aligned", "weighted", "l2")


def mlp_ops(
    cap: Capture, L: int, chat: Tensor, d_hat: Tensor, cfg, lw: Optional[LayerWeights] = None
) -> MLPOps:
    """§5-6 MLP factors: the first rule with a non-vanishing denominator, starting at
    depth0 (depth 0) or the preset's rule (depth >= 1); else all to ``embedding``."""
    lc = cap.layers[L]
    lw = lw or lc.weights()
    C = cap.comps.n_writers_mlp(L)
    ch = chat[:, :C]
    cells = lc.mlp_cells(lw)
    weights = mlp_cell_weights(lw, cells[0], lc.mlp_h, d_hat, lc.sigma_mlp_post)
    cache: dict[str, tuple[Tensor, Tensor]] = {}

    def rule(name: str) -> tuple[Tensor, Tensor]:  # (factors [B,C,S], valid [B,S])
        if name not in cache:
            if name == "l2":
                l2 = mlp_l2(lw, lc, ch)
                tot = l2.sum(1)
                valid = tot >= EPS_DEN
                cache[name] = (l2 / torch.where(valid, tot, 1.0)[:, None] * valid[:, None], valid)
            else:
                # the rules a sweep always needs share one pass over W_in
                names = [name] + [
                    r
                    for r in ("depth0", cfg.mlp_rule)
                    if r != name and r != "l2" and r not in cache
                ]
                vecs = mlp_score_vectors(lw, cells, torch.stack([weights[r] for r in names]))
                for r, sc in zip(names, mlp_scores(lw, lc, ch, vecs)):
                    den, valid = safe_denom(sc, cfg.beta, 1)
                    cache[r] = (sc / den[:, None] * valid[:, None], valid)
        return cache[name]

    def chain(start: str) -> Tensor:
        B, S = cells[0].shape[:2]
        fac = torch.zeros(B, C, S, dtype=cap.dtype, device=ch.device)
        # Padding positions never hold credit: count them as done so they cannot
        # force the costlier fallback rules.
        done = torch.arange(S, device=ch.device)[None, :] >= cap.lengths[:, None]
        for name in _CHAIN[_CHAIN.index(start) :]:
            f, valid = rule(name)
            take = valid & ~done
            fac = torch.where(take[:, None], f, fac)
            done |= valid
            if bool(done.all()):
                break
        fac[:, 0] = torch.where(done, fac[:, 0], torch.ones_like(fac[:, 0]))  # to embedding
        return fac

    return MLPOps(chain("depth0"), chain(cfg.mlp_rule))
