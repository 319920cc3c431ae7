"""Writer scores of every reader, as batched tensor code (METHOD.md §2-5).

Shapes: ``B`` prompts, ``C`` eligible writers, ``H`` heads, ``S`` positions,
``D`` width, ``d`` head dim, ``F`` MLP width. Writers enter as ``ĉ`` (centered
for LayerNorm models); the marginal norm ``m(c)[s] = γ ⊙ ĉ[s] / σ(x[s])`` is
folded into the contractions: ``m(c)[s]·v = (ĉ[s]·(γ⊙v)) / σ[s]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .adapters.base import LayerWeights, ModelSpec
from .capture import Capture, LayerCapture, causal_mask, expand_kv

Tensor = torch.Tensor
EPS_DEN = 1e-10


def safe_denom(v: Tensor, beta: float, dim: int) -> tuple[Tensor, Tensor]:
    """§6 ``safe_denom``: ``(den, valid)`` with ``den = sign(T)·max(|T|, β·N)``,
    ``T = Σv``, ``N = Σ|v|`` (``T >= 0`` counts positive); ``valid`` is False where
    ``N < 1e-10`` (there the credit is dropped) and ``den`` is 1 there."""
    T, N = v.sum(dim), v.abs().sum(dim)
    valid = N >= EPS_DEN
    den = torch.where(T >= 0, 1.0, -1.0).to(v.dtype) * torch.maximum(T.abs(), beta * N)
    return torch.where(valid, den, torch.ones_like(den)), valid


def normalize(v: Tensor, beta: float, dim: int) -> Tensor:
    """``v / safe_denom(v)`` along ``dim``, zero where the denominator vanishes."""
    den, valid = safe_denom(v, beta, dim)
    return v / den.unsqueeze(dim) * valid.unsqueeze(dim)


def centered_writers(cap: Capture, writers: Tensor) -> Tensor:
    """``ĉ`` for every writer (§3): centered over D for LayerNorm models."""
    return cap.spec.ln_final.center(writers) if cap.spec.ln_final.kind == "layer" else writers


def causal_center(raw: Tensor) -> Tensor:
    """``raw[..., q, s] − mean_{s' <= q} raw[..., q, s']``, zero for ``s > q``."""
    S = raw.shape[-1]
    mask = causal_mask(S, raw.device).to(raw.dtype)
    mean = (raw * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
    return (raw - mean) * mask


# --------------------------------------------------------------------------- §4
# K/Q scores can be computed two ways. "fold": contract the writers with one
# D-vector per (h, q) — ``W_K Q[h,q]`` — or, with rotary, per (h, q, s) —
# ``W_K R_s^T Q[h,q]`` (cost ~ C·H·S²·D). "project": project every writer into
# head space, rotate, contract (cost ~ C·S·H·d·D + C·H·S²·d). The first is cheaper
# while S < d; the second needs no [H, S, S, D] buffer.
FOLD_MAX_ELEMENTS = 64_000_000


def score_mode(spec: ModelSpec, B: int, S: int) -> str:
    if S >= spec.d_head:
        return "project"
    if spec.rotary is not None and B * spec.n_heads * S * S * spec.d_model > FOLD_MAX_ELEMENTS:
        return "project"
    return "fold"


def raw_key_scores(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture, chat: Tensor,
                   cos: Optional[Tensor], sin: Optional[Tensor], mode: Optional[str] = None) -> Tensor:
    """``rawK_c[h,q,s] = scale · Q[h,q] · RoPE_s(m(c)[s] W_K[g(h)])`` → ``[B,C,H,S,S]``."""
    B, C, S, D = chat.shape
    sigma = lc.sigma_attn  # [B, S]
    W_K = lw.W_K * lw.ln_attn.weight[:, None]  # γ folded into the weights: m·W = (ĉ/σ)·(γ⊙W)
    if (mode or score_mode(spec, B, S)) == "fold":
        W_K = expand_kv(W_K, spec, 0)  # [H, D, d]
        if spec.rotary is None:  # Q[h,q]·(m W_K) = m·(W_K Q[h,q])
            u = torch.einsum("bhqe,hDe->bhqD", lc.Q, W_K)
            raw = torch.einsum("bcsD,bhqD->bchqs", chat, u)
        else:  # Q[h,q]·R_s(m W_K) = m·(W_K R_s^T Q[h,q]); R_s^T rotates by -θ_s
            Qr = spec.rotary.apply(lc.Q[:, :, :, None, :].expand(-1, -1, -1, S, -1), cos, -sin)
            u = torch.einsum("bhqse,hDe->bhqsD", Qr, W_K)
            raw = torch.einsum("bcsD,bhqsD->bchqs", chat, u)
        raw = raw / sigma[:, None, None, None, :]
    else:
        m = chat / sigma[:, None, :, None]
        kc = torch.einsum("bcsD,gDe->bcgse", m, W_K)  # per-writer keys, kv heads only
        if spec.rotary is not None:
            kc = spec.rotary.apply(kc, cos, sin)
        Hkv, G = spec.n_kv_heads, spec.group_size
        Qg = lc.Q.reshape(B, Hkv, G, S, -1)
        raw = torch.einsum("bcgse,bgiqe->bcgiqs", kc, Qg).reshape(B, C, spec.n_heads, S, S)
    return lw.attn_scale * raw


def raw_query_scores(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture, chat: Tensor,
                     cos: Optional[Tensor], sin: Optional[Tensor], mode: Optional[str] = None) -> Tensor:
    """``rawQ_c[h,q,s] = scale · RoPE_q(m(c)[q] W_Q[h]) · K[g(h),s]`` → ``[B,C,H,S,S]``."""
    B, C, S, D = chat.shape
    sigma = lc.sigma_attn
    K = expand_kv(lc.K, spec)  # [B, H, S, d]
    W_Q = lw.W_Q * lw.ln_attn.weight[:, None]  # γ folded into the weights
    if (mode or score_mode(spec, B, S)) == "fold":
        if spec.rotary is None:  # (m W_Q)·K[s] = m·(W_Q K[s])
            u = torch.einsum("bhse,hDe->bhsD", K, W_Q)
            raw = torch.einsum("bcqD,bhsD->bchqs", chat, u)
        else:  # R_q(m W_Q)·K[s] = m·(W_Q R_q^T K[s])
            Kr = spec.rotary.apply(K[:, :, None, :, :].expand(-1, -1, S, -1, -1),
                                   cos[:, None], -sin[:, None])
            u = torch.einsum("bhqse,hDe->bhqsD", Kr, W_Q)
            raw = torch.einsum("bcqD,bhqsD->bchqs", chat, u)
        raw = raw / sigma[:, None, None, :, None]
    else:
        m = chat / sigma[:, None, :, None]
        qc = torch.einsum("bcqD,hDe->bchqe", m, W_Q)
        if spec.rotary is not None:
            qc = spec.rotary.apply(qc, cos, sin)
        raw = torch.einsum("bchqe,bhse->bchqs", qc, K)
    return lw.attn_scale * raw


def value_scores(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture, chat: Tensor) -> Tensor:
    """``value_c[h,s] = (m(c)[s] W_V[g(h)]) · V[g(h),s]`` → ``[B,C,H,S]``."""
    WVV = torch.einsum("bgse,gDe->bgsD", lc.V, lw.W_V * lw.ln_attn.weight[:, None])
    val = torch.einsum("bcsD,bgsD->bcgs", chat, WVV) / lc.sigma_attn[:, None, None, :]
    return expand_kv(val, spec, 2)


def projected_values(spec: ModelSpec, lw: LayerWeights, lc: LayerCapture) -> Tensor:
    """``pv[h,s] = V[g(h),s] · W_O[h]`` (no ``b_O``) → ``[B,H,S,D]``."""
    return torch.einsum("bhse,heD->bhsD", expand_kv(lc.V, spec), lw.W_O)


def value_shares(lc: LayerCapture, pv: Tensor, d_hat: Tensor) -> tuple[Tensor, Tensor]:
    """``(share0, shareA)``, each ``[B,H,S,S]``: depth-0 shares ``A·(p̂v·d_t)`` and
    aligned shares ``A·(pv·o[q]) / max(‖o[q]‖², 1e-10)`` with ``o[q] = Σ_h Σ_s A pv``."""
    share0 = lc.A * torch.einsum("bhsD,bD->bhs", pv, d_hat)[:, :, None, :]
    o = lc.head_out.sum(1)  # [B, S, D] = Σ_h Σ_s A pv
    onorm = o.pow(2).sum(-1).clamp_min(EPS_DEN)  # [B, S]
    shareA = lc.A * torch.einsum("bhsD,bqD->bhqs", pv, o) / onorm[:, None, :, None]
    return share0, shareA


# --------------------------------------------------------------------------- §5
def _safe(x: Tensor) -> Tensor:
    return torch.where(x.abs() < EPS_DEN, torch.full_like(x, EPS_DEN), x)


def mlp_cell_weights(lw: LayerWeights, lc: LayerCapture, d_hat: Tensor) -> dict[str, Tensor]:
    """Cell weights ``w_j`` of the three weighted rules, each ``[B,S,F]``."""
    a, W_out = lc.act, lw.mlp.W_out  # W_out: [D, F]
    h = a @ W_out.T  # Σ_j a_j W_out[:, j], no bias
    return {
        "depth0": a * (d_hat @ W_out)[:, None, :],
        "aligned": a * (h @ W_out) / h.pow(2).sum(-1, keepdim=True).clamp_min(EPS_DEN),
        "weighted": a / a.sum(-1, keepdim=True).clamp_min(EPS_DEN),
    }


def mlp_score_vectors(lw: LayerWeights, lc: LayerCapture, w: Tensor) -> Tensor:
    """``Σ_j (w_j / pre_j) W_in[j]`` (gated: the ½(gate + up) share) → ``[B,S,D]``,
    so that ``score_c[q] = m(c)[q] · vec[q]``."""
    mlp = lw.mlp
    if mlp.gated:
        return 0.5 * ((w / _safe(lc.gate)) @ mlp.W_gate + (w / _safe(lc.up)) @ mlp.W_up)
    return (w / _safe(lc.pre)) @ mlp.W_in


def mlp_scores(lw: LayerWeights, lc: LayerCapture, chat: Tensor, vec: Tensor) -> Tensor:
    """``score_c[q] = m(c)[q] · vec[q]`` → ``[B,C,S]``."""
    return torch.einsum("bcqD,bqD->bcq", chat, vec * lw.ln_mlp.weight) / lc.sigma_mlp[:, None, :]


def mlp_l2(lw: LayerWeights, lc: LayerCapture, chat: Tensor) -> Tensor:
    """``l2_c[q] = ‖m(c)[q] · W_in^T‖`` (gated: over the concatenated gate and up parts)."""
    m = chat * lw.ln_mlp.weight / lc.sigma_mlp[:, None, :, None]
    mlp = lw.mlp
    mats = (mlp.W_gate, mlp.W_up) if mlp.gated else (mlp.W_in,)
    return torch.sqrt(sum((m @ W.T).pow(2).sum(-1) for W in mats))


def target_direction(cap: Capture, u: Tensor) -> Tensor:
    """``d_t = γ_f ⊙ u / σ_f(resid_final[t])`` per prompt → ``[B, D]``."""
    B = u.shape[0]
    sig = cap.sigma_final[torch.arange(B, device=u.device), cap.t]
    return cap.spec.ln_final.weight.to(u.dtype) * u / sig[:, None]


def center_vec(cap: Capture, v: Tensor) -> Tensor:
    return v - v.mean(-1, keepdim=True) if cap.spec.ln_final.kind == "layer" else v


@dataclass
class HeadOps:
    """Everything the sweep and the paths need for the heads of one layer, per unit
    of credit: source splits and writer shares already divided by their
    denominators and multiplied by the branch weights (zero where dropped)."""

    f0: Tensor  # [B,H,Q,S] depth-0 source split
    fk: Tensor  # [B,H,Q,S] depth>=1 source split
    Kn: Optional[Tensor]  # [B,C,H,Q,S]  w_K · key_c / safe_denom
    Qn: Optional[Tensor]  # [B,C,H,Q,S]  w_Q · query_c / safe_denom
    Vn: Optional[Tensor]  # [B,C,H,S]    w_V · value_c / safe_denom


@dataclass
class MLPOps:
    fac0: Tensor  # [B,C,S] share of each writer per unit of depth-0 credit at q
    fack: Tensor  # [B,C,S] the same at depth >= 1


def head_ops(cap: Capture, L: int, chat: Tensor, d_hat: Tensor, cfg) -> HeadOps:
    """§4 scores of layer L turned into the §6 distribution factors."""
    spec = cap.spec
    lw, lc = spec.layers[L].cast(cap.dtype), cap.layers[L]
    C = cap.comps.n_writers_attn(L)
    ch = chat[:, :C]
    pv = projected_values(spec, lw, lc)
    share0, shareA = value_shares(lc, pv, d_hat)
    f0 = normalize(share0, cfg.beta, -1)
    if cfg.value_shares == "aligned":
        fk = normalize(shareA, cfg.beta, -1)
    else:
        fk = lc.A / lc.A.sum(-1, keepdim=True)
    Kn = Qn = Vn = None
    if cfg.w_K:
        key = causal_center(raw_key_scores(spec, lw, lc, ch, cap.cos, cap.sin))
        Kn = cfg.w_K * normalize(key, cfg.beta, 1)
    if cfg.w_Q:
        query = causal_center(raw_query_scores(spec, lw, lc, ch, cap.cos, cap.sin))
        Qn = cfg.w_Q * normalize(query, cfg.beta, 1)
    if cfg.w_V:
        Vn = cfg.w_V * normalize(value_scores(spec, lw, lc, ch), cfg.beta, 1)
    return HeadOps(f0, fk, Kn, Qn, Vn)


_CHAIN = ("depth0", "aligned", "weighted", "l2")


def mlp_ops(cap: Capture, L: int, chat: Tensor, d_hat: Tensor, cfg) -> MLPOps:
    """§5-6 MLP factors: the first rule with a non-vanishing denominator, starting at
    depth0 (depth 0) or the preset's rule (depth >= 1); else all to ``embedding``."""
    spec = cap.spec
    lw, lc = spec.layers[L].cast(cap.dtype), cap.layers[L]
    C = cap.comps.n_writers_mlp(L)
    ch = chat[:, :C]
    weights = mlp_cell_weights(lw, lc, d_hat)
    cache: dict[str, tuple[Tensor, Tensor]] = {}

    def rule(name: str) -> tuple[Tensor, Tensor]:  # (factors [B,C,S], valid [B,S])
        if name not in cache:
            if name == "l2":
                l2 = mlp_l2(lw, lc, ch)
                tot = l2.sum(1)
                valid = tot >= EPS_DEN
                cache[name] = (l2 / torch.where(valid, tot, 1.0)[:, None] * valid[:, None], valid)
            else:
                sc = mlp_scores(lw, lc, ch, mlp_score_vectors(lw, lc, weights[name]))
                den, valid = safe_denom(sc, cfg.beta, 1)
                cache[name] = (sc / den[:, None] * valid[:, None], valid)
        return cache[name]

    def chain(start: str) -> Tensor:
        B, S = lc.act.shape[:2]
        fac = torch.zeros(B, C, S, dtype=cap.dtype, device=ch.device)
        # Padding positions never hold credit: count them as done so they cannot
        # force the costlier fallback rules.
        done = torch.arange(S, device=ch.device)[None, :] >= cap.lengths[:, None]
        for name in _CHAIN[_CHAIN.index(start):]:
            f, valid = rule(name)
            take = valid & ~done
            fac = torch.where(take[:, None], f, fac)
            done |= valid
            if bool(done.all()):
                break
        fac[:, 0] = torch.where(done, fac[:, 0], torch.ones_like(fac[:, 0]))  # to embedding
        return fac

    return MLPOps(chain("depth0"), chain(cfg.mlp_rule))
