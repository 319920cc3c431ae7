"""docs/METHOD.md §9: the invariants, checked on any loaded model.

Each check compares two independent computations and reports the worst error
relative to the size of the reference quantity. "Bias parts" are the constants
that are never credited: bias components, the norm's β, and q/k/v/in biases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import decompose as dec
from .capture import capture, expand_kv
from .config import make_config
from .flow import sweep
from .paths import PathSearch

DEFAULT_TEXTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The cat sat on the mat because it was",
    "1 2 3 4 5 6",
]


@dataclass
class Check:
    name: str
    worst_error: float
    tolerance: float
    ok: bool

    def __str__(self):
        return (f"{'PASS' if self.ok else 'FAIL'}  {self.name:<44} worst rel. error "
                f"{self.worst_error:.2e}  (tolerance {self.tolerance:.0e})")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max|b|`` (absolute when b is all zeros)."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def _norm_bias(norm, dtype):
    return norm.bias.to(dtype) if norm.bias is not None else None


def check_capture(tracer, texts, dtype, tol) -> list[tuple[str, float]]:
    """Invariants 1-7 and 9 on a batch of prompts; returns ``[(name, error)]``."""
    spec, tok = tracer.spec, tracer.tokenizer
    preps = [tracer.prepare(t, " the") for t in texts]
    B, S = len(preps), max(len(p.ids) for p in preps)
    ids = torch.full((B, S), tracer._pad_id, dtype=torch.long)
    for b, p in enumerate(preps):
        ids[b, :len(p.ids)] = torch.tensor(p.ids)
    lengths = torch.tensor([len(p.ids) for p in preps])
    cap = capture(spec, ids, lengths, dtype=dtype, full_logits=True, center=False)
    errs: dict[str, float] = {}

    def upd(name, a, b, real):  # worst error over the real (unpadded) positions
        mask = real
        while mask.dim() < a.dim():
            mask = mask[..., None]
        mask = mask.expand_as(a)
        e = rel_err(a[mask], b.expand_as(a)[mask])
        errs[name] = max(errs.get(name, 0.0), e)

    real = torch.arange(S)[None, :] < lengths[:, None]  # [B, S]
    W = cap.all_writers()  # [B, N_all, S, D]
    comps = cap.comps
    prefix_all = []  # number of all-writers before each layer's attention / mlp
    n = comps.n_emb
    for L, lw in enumerate(spec.layers):
        prefix_all.append((n, n + spec.n_heads + (lw.b_O is not None)))
        n += spec.n_heads + (lw.b_O is not None) + 1
    real_q = real[:, None, :, None] & real[:, None, None, :]  # for [B, H, S, S]
    for L, (lw0, lc) in enumerate(zip(spec.layers, cap.layers)):
        lw = lw0.cast(dtype)
        na, nm = prefix_all[L]
        if spec.parallel:
            nm = na
        # 1. residual closure for the attention and MLP readers
        upd("1 residual closure", W[:, :na].sum(1), lc.resid_pre, real)
        upd("1 residual closure", W[:, :nm].sum(1), lc.resid_mlp_in, real)
        chat = dec.centered_writers(cap, W[:, :na])
        beta = _norm_bias(lw.ln_attn, dtype)
        actual = lw.attn_scale * lc.Q @ expand_kv(lc.K, spec).transpose(-1, -2)
        A = lc.A
        # 2. K side: Σ_c rawK_c + bias parts = pre-mask logits
        rawK = dec.raw_key_scores(spec, lw, lc, chat, cap.cos, cap.sin).sum(1)
        kconst = torch.zeros_like(lc.K)
        if beta is not None:
            kconst = kconst + torch.einsum("D,gDe->ge", beta, lw.W_K)[None, :, None, :]
        if lw.b_K is not None:
            kconst = kconst + lw.b_K[None, :, None, :]
        if spec.rotary is not None:
            kconst = spec.rotary.apply(kconst, cap.cos, cap.sin)
        kpart = lw.attn_scale * lc.Q @ expand_kv(kconst, spec).transpose(-1, -2)
        upd("2 K-side closure", rawK + kpart, actual, real_q)
        # 3. Q side
        rawQ = dec.raw_query_scores(spec, lw, lc, chat, cap.cos, cap.sin).sum(1)
        qconst = torch.zeros_like(lc.Q)
        if beta is not None:
            qconst = qconst + torch.einsum("D,hDe->he", beta, lw.W_Q)[None, :, None, :]
        if lw.b_Q is not None:
            qconst = qconst + lw.b_Q[None, :, None, :]
        if spec.rotary is not None:
            qconst = spec.rotary.apply(qconst, cap.cos, cap.sin)
        qpart = lw.attn_scale * qconst @ expand_kv(lc.K, spec).transpose(-1, -2)
        upd("3 Q-side closure", rawQ + qpart, actual, real_q)
        # 4. V side: Σ_c value_c + const·V = ‖V‖²
        val = dec.value_scores(spec, lw, lc, chat).sum(1)  # [B, H, S]
        vconst = torch.zeros(spec.n_kv_heads, spec.d_head, dtype=dtype)
        if beta is not None:
            vconst = vconst + torch.einsum("D,gDe->ge", beta, lw.W_V)
        if lw.b_V is not None:
            vconst = vconst + lw.b_V
        vpart = expand_kv(torch.einsum("ge,bgse->bgs", vconst, lc.V), spec)
        upd("4 V-side closure", val + vpart, expand_kv(lc.V.pow(2).sum(-1), spec), real[:, None])
        # 5. MLP: Σ_c k_cj + norm-bias part + b_in = pre_j (gate and up for gated MLPs)
        mchat = dec.centered_writers(cap, W[:, :nm])
        mbeta = _norm_bias(lw.ln_mlp, dtype)
        m = mchat * lw.ln_mlp.weight / lc.sigma_mlp[:, None, :, None]
        msum = m.sum(1)
        mlp = lw.mlp
        _, pre, gate, up = lc.mlp_cells(lw)
        pairs = [(mlp.W_gate, gate), (mlp.W_up, up)] if mlp.gated else [(mlp.W_in, pre)]
        for Wm, actual_pre in pairs:
            parts = msum @ Wm.T
            if mbeta is not None:
                parts = parts + mbeta @ Wm.T
            if not mlp.gated and mlp.b_in is not None:
                parts = parts + mlp.b_in
            upd("5 MLP pre-activation closure", parts, actual_pre, real)
        # 6. attention output: Σ_h Σ_s A·pv + b_O = attn_out
        pv = dec.projected_values(spec, lw, lc)
        out = torch.einsum("bhqs,bhsD->bqD", A, pv)
        if lw.b_O is not None:
            out = out + lw.b_O
        # the sublayer's output as the capture added it to the residual, (A V) W_O per
        # head; not resid differences, whose fp32 cancellation swamps the check
        attn_out = lc.attn_out + (lw.b_O if lw.b_O is not None else 0)
        upd("6 attention output closure", out, attn_out, real)
    upd("1 residual closure", W.sum(1), cap.resid_final, real)
    # 7. seeds: Σ_c I_c (bias components too) + constant parts = target − mean logit
    ln_f = spec.ln_final.cast(dtype)
    W_U = spec.W_U.to(dtype)
    tid = torch.tensor([p.target_id for p in preps])
    u = W_U[tid] - W_U.mean(0)
    d = dec.target_direction(cap, u)
    ar = torch.arange(B)
    Wt = dec.centered_writers(cap, W[ar, :, cap.t])  # [B, N_all, D]
    seeds = torch.einsum("bnD,bD->b", Wt, d)
    if ln_f.bias is not None:
        seeds = seeds + (ln_f.bias * u).sum(-1)
    if spec.b_U is not None:
        b_U = spec.b_U.to(dtype)
        seeds = seeds + b_U[tid] - b_U.mean()
    lt = cap.logits_t
    upd("7 seeds sum to target - mean logit", seeds, lt[ar, tid] - lt.mean(-1), torch.ones(B, dtype=torch.bool))
    # 9. captured logits = the model's own forward pass
    with torch.no_grad():
        mdtype = next(tracer.model.parameters()).dtype
        ref = torch.stack([tracer.model(torch.tensor([p.ids])).logits[0, -1].to(dtype) for p in preps])
    upd("9 captured logits = model forward", lt, ref, torch.ones(B, dtype=torch.bool))
    del mdtype
    return sorted(errs.items())


def check_paths(tracer, text, dtype, path_min_frac=1e-3, max_nodes=200_000) -> float:
    """Invariant 8 on any model: token credit = Σ complete paths + the flow of the
    partial paths that pruning dropped (exact by linearity; with
    ``path_min_frac=0`` on a tiny model nothing is dropped)."""
    cfg = make_config("kqv_aligned", path_min_frac=path_min_frac, max_path_nodes=max_nodes)
    prep = tracer.prepare(text, " the")
    ids = torch.tensor([prep.ids])
    cap = capture(tracer.spec, ids, torch.tensor([len(prep.ids)]), dtype=dtype)
    chat = dec.writers_hat(cap)
    tid = torch.tensor([prep.target_id], device=cap.device)
    W_U, W_U_mean = tracer.spec.W_U, tracer._W_U_mean.to(dtype)
    I = dec.seeds(cap, chat, W_U, W_U_mean, tid, None, cfg.seed)
    d_hat = dec.center_vec(cap, dec.target_direction(cap, dec.unembed_direction(W_U, W_U_mean, tid)))
    S, N = len(prep.ids), len(cap.comps)
    F0 = torch.zeros(1, 1, N, S, dtype=dtype, device=cap.device)
    F0[0, 0, :, S - 1] = I[0]

    def ops_for_layer(L):
        lw = cap.layers[L].weights()
        return (dec.mlp_ops(cap, L, chat, d_hat, cfg, lw),
                dec.head_ops(cap, L, chat, d_hat, cfg, tracer.engine, lw))

    search = PathSearch(cap.comps, F0, cfg.path_min_frac * F0.abs().sum((2, 3)), max_nodes,
                        keep_remainder=True)
    flow = sweep(cap, ops_for_layer, F0, search=search)
    R0, Rk = search.remainder
    rest = sweep(cap, ops_for_layer, R0, Fk=Rk)
    n_emb = cap.comps.n_emb
    lhs = search.terminal_credit(S) + rest.token_credit(n_emb)
    return rel_err(lhs, flow.token_credit(n_emb))


def forward_tolerance(tracer, tol: float) -> float:
    """Invariant 9's tolerance: the captured pass runs in the math dtype, the model's
    own forward in its weights' dtype, so their logits differ by that dtype's
    rounding: 8 units of its epsilon (bf16: 6e-2, fp16: 8e-3) and at least 1e-4."""
    wdtype = tracer.spec.W_E.dtype
    eps = torch.finfo(wdtype).eps if wdtype in (torch.bfloat16, torch.float16) else 0.0
    return max(tol, 1e-4, 8 * eps)


def validate_model(model=None, tokenizer=None, texts=None, dtype=None, tracer=None,
                   tol=None) -> list[Check]:
    """Every §9 invariant on ``texts`` (a few default prompts otherwise)."""
    from .tracer import Tracer
    tracer = tracer or Tracer(model=model, tokenizer=tokenizer, dtype=dtype)
    dtype = tracer.dtype
    tol = tol if tol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    texts = texts or DEFAULT_TEXTS
    texts = [t for t in texts if tracer.prepare(t, " the").ids]
    checks = [Check(name, err, tol if not name.startswith("9") else forward_tolerance(tracer, tol), None)
              for name, err in check_capture(tracer, texts, dtype, tol)]
    e8 = max(check_paths(tracer, t, dtype) for t in texts[:2])
    checks.append(Check("8 flow = paths + pruned remainder", e8, tol, None))
    for c in checks:
        c.ok = bool(c.worst_error <= c.tolerance)
    return sorted(checks, key=lambda c: c.name)
