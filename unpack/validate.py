"""docs/METHOD.md §9: the invariants, checked on any loaded model, one function
each, numbered as there (``check_1_closure`` … ``check_9_forward``).

Each check compares two independent computations and reports the worst error
relative to the size of the reference quantity. "Bias parts" are the constants
that are never credited: bias components, the norm's β, and q/k/v/in biases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from . import decompose as dec
from .capture import Capture, attention_logits, capture, expand_kv, softcap, with_bias
from .config import make_config
from .flow import initial_credit, sweep
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
    info: bool = False  # shown for information, neither passed nor failed

    def __str__(self):
        if self.info:
            return f"INFO  {self.name:<44} rel. difference {self.worst_error:.2e}"
        return (
            f"{'PASS' if self.ok else 'FAIL'}  {self.name:<44} worst rel. error "
            f"{self.worst_error:.2e}  (tolerance {self.tolerance:.0e})"
        )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max|b|`` (absolute when b is all zeros)."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


@dataclass
class Batch:
    """Prompts captured for the checks (uncentered, every writer kept) and the worst
    error of each invariant so far."""

    tracer: object
    preps: list
    cap: Capture
    W: torch.Tensor  # [B, N_all, S, D] every writer, bias components included
    real: torch.Tensor  # [B, S] True at the prompts' real (unpadded) positions
    errs: dict = field(default_factory=dict)

    @property
    def every(self) -> torch.Tensor:
        """``[B]`` all True: one value per prompt."""
        return torch.ones(self.real.shape[0], dtype=torch.bool, device=self.real.device)

    @property
    def real_q(self) -> torch.Tensor:
        """``[B, 1, S, S]``: real (query, source) pairs."""
        return self.real[:, None, :, None] & self.real[:, None, None, :]

    def record(self, name: str, a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> None:
        """Keep the worst relative error of ``a`` against ``b`` where ``real`` holds."""
        mask = real
        while mask.dim() < a.dim():
            mask = mask[..., None]
        mask = mask.expand_as(a)
        self.errs[name] = max(self.errs.get(name, 0.0), rel_err(a[mask], b.expand_as(a)[mask]))

    def n_before(self, L: int) -> tuple[int, int]:
        """How many of all writers (``comps.all_names``) layer ``L``'s attention and
        its MLP read."""
        comps = self.cap.comps
        na = comps.n_emb + sum(comps.n_heads + comps.attn_bias[i] + 1 for i in range(L))
        return na, na if comps.parallel else na + comps.n_heads + comps.attn_bias[L]


def bias_part(beta, W: torch.Tensor, b) -> torch.Tensor:
    """``β · W[g] + b[g]`` → ``[G, d]``: the part of a head's projection that no
    component writes (the norm's shift ``β`` and the projection's bias), zero when
    there is neither."""
    part = torch.zeros(W.shape[0], W.shape[2], dtype=W.dtype, device=W.device)
    if beta is not None:
        part = part + torch.einsum("D,gDe->ge", beta, W)
    return part + b if b is not None else part


def _rotated(lw, lc, part: torch.Tensor, like: torch.Tensor, norm, sigma) -> torch.Tensor:
    """A per-head constant ``[G, d]`` at every position, through the qk-norm ``norm``
    (given its scale ``sigma [B, G, S]``) and rotated like ``like [B, G, S, d]``."""
    part = part[None, :, None, :].expand_as(like)
    if norm is not None:
        part = norm.apply(part, sigma)
    return lw.rotary.apply(part, lc.cos, lc.sin) if lw.rotary is not None else part


def _capped(lw, lc, spec, x: torch.Tensor) -> torch.Tensor:
    """``x`` times the soft-cap's ratio of the layer (§4), ``x`` without a soft-cap."""
    r = dec.capped_ratio(spec, lw, lc)
    return x if r is None else x * r


def check_1_closure(bt: Batch, L: Optional[int] = None) -> None:
    """1: the writers before each reader of layer ``L`` add up to its input residual
    (``L=None``: all writers, the final residual)."""
    if L is None:
        bt.record("1 residual closure", bt.W.sum(1), bt.cap.resid_final, bt.real)
        return
    na, nm = bt.n_before(L)
    lc = bt.cap.layers[L]
    bt.record("1 residual closure", bt.W[:, :na].sum(1), lc.resid_pre, bt.real)
    bt.record("1 residual closure", bt.W[:, :nm].sum(1), lc.resid_mlp_in, bt.real)


def check_2_keys(bt: Batch, lw, lc, chat: torch.Tensor, actual: torch.Tensor) -> None:
    """2: ``Σ_c rawK_c`` plus the bias parts = the pre-mask attention scores."""
    spec = bt.cap.spec
    rawK = dec.raw_key_scores(spec, lw, lc, chat, lc.cos, lc.sin).sum(1)
    kconst = _rotated(
        lw, lc, bias_part(lw.ln_attn.bias, lw.W_K, lw.b_K), lc.K, lw.k_norm, lc.sigma_k
    )
    kpart = lw.attn_scale * lc.Q @ expand_kv(kconst, spec).transpose(-1, -2)
    bt.record("2 K-side closure", rawK + _capped(lw, lc, spec, kpart), actual, bt.real_q)


def check_3_queries(bt: Batch, lw, lc, chat: torch.Tensor, actual: torch.Tensor) -> None:
    """3: ``Σ_c rawQ_c`` plus the bias parts = the pre-mask attention scores."""
    spec = bt.cap.spec
    rawQ = dec.raw_query_scores(spec, lw, lc, chat, lc.cos, lc.sin).sum(1)
    qconst = _rotated(
        lw, lc, bias_part(lw.ln_attn.bias, lw.W_Q, lw.b_Q), lc.Q, lw.q_norm, lc.sigma_q
    )
    qpart = lw.attn_scale * qconst @ expand_kv(lc.K, spec).transpose(-1, -2)
    bt.record("3 Q-side closure", rawQ + _capped(lw, lc, spec, qpart), actual, bt.real_q)


def check_4_values(bt: Batch, lw, lc, chat: torch.Tensor) -> None:
    """4: ``Σ_c value_c`` plus the bias part ``(β W_V + b_V) · V`` = ``‖V‖²``."""
    spec = bt.cap.spec
    val = dec.value_scores(spec, lw, lc, chat).sum(1)  # [B, H, S]
    vconst = bias_part(lw.ln_attn.bias, lw.W_V, lw.b_V)
    vpart = expand_kv(torch.einsum("ge,bgse->bgs", vconst, lc.V), spec)
    bt.record(
        "4 V-side closure", val + vpart, expand_kv(lc.V.pow(2).sum(-1), spec), bt.real[:, None]
    )


def check_5_mlp(bt: Batch, lw, lc, mchat: torch.Tensor) -> None:
    """5: ``Σ_c k_{c,j}`` + the norm-shift part + ``b_in`` = ``pre_j`` (gate and up
    for gated MLPs)."""
    msum = lw.ln_mlp.marginal_norm(mchat, lc.sigma_mlp).sum(1)
    mlp, mbeta = lw.mlp, lw.ln_mlp.bias
    _, pre, gate, up = lc.mlp_cells(lw)
    for Wm, actual_pre in [(mlp.W_gate, gate), (mlp.W_up, up)] if mlp.gated else [(mlp.W_in, pre)]:
        parts = msum @ Wm.T
        if mbeta is not None:
            parts = parts + mbeta @ Wm.T
        if not mlp.gated and mlp.b_in is not None:
            parts = parts + mlp.b_in
        bt.record("5 MLP pre-activation closure", parts, actual_pre, bt.real)


def check_6_attention_output(bt: Batch, lw, lc) -> None:
    """6: ``Σ_h Σ_s A·pv + b_O`` = the attention output."""
    pv = dec.projected_values(bt.cap.spec, lw, lc)
    out = with_bias(torch.einsum("bhqs,bhsD->bqD", lc.A, pv), lw.b_O)
    # the sublayer's output as the capture added it to the residual, (A V) W_O per
    # head; not resid differences, whose fp32 cancellation swamps the check
    bt.record("6 attention output closure", out, with_bias(lc.attn_out, lw.b_O), bt.real)


def check_7_seeds(bt: Batch) -> None:
    """7: ``Σ_c I_c`` over every writer (bias components too) plus the constant parts
    (the final norm's shift, ``b_U``) = target logit − mean logit at ``t``."""
    cap, spec, dtype = bt.cap, bt.cap.spec, bt.cap.dtype
    tid = torch.tensor([p.target_id for p in bt.preps], device=cap.device)
    W_U_mean = bt.tracer.W_U_mean.to(dtype)
    seeds = dec.seeds(cap, spec.ln_final.center(bt.W), spec.W_U, W_U_mean, tid, None).sum(1)
    const = torch.zeros_like(seeds)
    if spec.ln_final.bias is not None:
        u = dec.unembed_direction(spec.W_U, W_U_mean, tid)
        const = const + (spec.ln_final.bias.to(dtype) * u).sum(-1)
    if spec.b_U is not None:
        b_U = spec.b_U.to(dtype)
        const = const + b_U[tid] - b_U.mean()
    r = dec.capped_seed_ratio(cap, tid, None)  # the seeds took it; the constant parts take it here
    seeds = seeds + (const if r is None else r * const)
    lt = cap.logits_t
    ar = torch.arange(len(tid), device=cap.device)
    bt.record("7 seeds sum to target - mean logit", seeds, lt[ar, tid] - lt.mean(-1), bt.every)


LOW_PRECISION = (torch.bfloat16, torch.float16)
OWN_FORWARD = "9 info: the model's own {} forward"  # shown, not checked


def check_9_forward(bt: Batch) -> None:
    """9: the logits of the captured pass = the model's own forward pass, both in the
    math dtype on the same weights. With bfloat16/float16 weights the reference is
    the model's forward in float32 math on those weights (:func:`math_forward`);
    the model's own low-precision forward is kept apart, as information (its error
    is the weights' dtype rounding, not the decomposition's)."""
    model, cap, dtype = bt.tracer.model, bt.cap, bt.cap.dtype
    ids = [torch.tensor([p.ids], device=cap.device) for p in bt.preps]
    wdtype = bt.tracer.spec.W_E.dtype
    ref = math_forward(model, ids, dtype)
    bt.record("9 captured logits = model forward", cap.logits_t, ref, bt.every)
    if wdtype in LOW_PRECISION and dtype not in LOW_PRECISION:
        with torch.no_grad():
            own = torch.stack([model(x).logits[0, -1].to(dtype) for x in ids])
        bt.record(
            OWN_FORWARD.format(str(wdtype).replace("torch.", "")), cap.logits_t, own, bt.every
        )


def math_forward(model, ids: list, dtype) -> torch.Tensor:
    """``[B, V]`` last-position logits of the model's own forward with its
    low-precision weights and buffers cast to ``dtype`` module by module, just for
    that module's call and back after it (exact both ways), so only one module's
    weights are held in ``dtype`` at a time."""
    kept = {}  # id(tensor) -> (tensor, its own dtype)

    def up(mod, *_):
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            if t.dtype in LOW_PRECISION and t.dtype != dtype and id(t) not in kept:
                kept[id(t)] = (t, t.dtype)
                t.data = t.data.to(dtype)

    def down(mod, *_):
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            if id(t) in kept:
                t.data = t.data.to(kept.pop(id(t))[1])

    hooks = [
        h
        for m in model.modules()
        if any(True for _ in m.parameters(recurse=False))
        or any(True for _ in m.buffers(recurse=False))
        for h in (m.register_forward_pre_hook(up), m.register_forward_hook(down))
    ]
    try:
        with torch.no_grad():
            return torch.stack([model(x).logits[0, -1].to(dtype) for x in ids])
    finally:
        for h in hooks:
            h.remove()
        for t, own in kept.values():  # after an error inside a module's call
            t.data = t.data.to(own)


def check_layer(bt: Batch, L: int) -> None:
    """Invariants 1-6 at the readers of layer ``L``."""
    cap = bt.cap
    lw, lc = cap.layers[L].weights(), cap.layers[L]
    na, nm = bt.n_before(L)
    check_1_closure(bt, L)
    chat = cap.spec.ln_final.center(bt.W[:, :na])
    actual = softcap(attention_logits(cap.spec, lw, lc.Q, lc.K), lw.softcap)
    check_2_keys(bt, lw, lc, chat, actual)
    check_3_queries(bt, lw, lc, chat, actual)
    check_4_values(bt, lw, lc, chat)
    check_5_mlp(bt, lw, lc, cap.spec.ln_final.center(bt.W[:, :nm]))
    check_6_attention_output(bt, lw, lc)


def check_capture(tracer, texts, dtype) -> list[tuple[str, float]]:
    """Invariants 1-7 and 9 on a batch of prompts; returns ``[(name, error)]``."""
    preps = [tracer.prepare(t, " the") for t in texts]
    ids, lengths = tracer.pad(preps)
    cap = capture(tracer.spec, ids, lengths, dtype=dtype, full_logits=True, center=False)
    real = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).to(cap.device)
    bt = Batch(tracer, preps, cap, cap.all_writers(), real)
    for L in range(cap.spec.n_layers):
        check_layer(bt, L)
    check_1_closure(bt)
    check_7_seeds(bt)
    check_9_forward(bt)
    return sorted(bt.errs.items())


def check_8_paths(tracer, text, dtype, path_min_frac=1e-3, max_nodes=200_000) -> float:
    """Invariant 8 on any model: token credit = Σ complete paths + the flow of the
    partial paths that pruning dropped (exact by linearity; with
    ``path_min_frac=0`` on a tiny model nothing is dropped)."""
    cfg = make_config("kqv_aligned", path_min_frac=path_min_frac, max_path_nodes=max_nodes)
    prep = tracer.prepare(text, " the")
    S = len(prep.ids)
    cap = capture(tracer.spec, torch.tensor([prep.ids]), torch.tensor([S]), dtype=dtype)
    I, d_hat = tracer.start(cap, torch.tensor([prep.target_id], device=cap.device), None, cfg.seed)
    F0 = initial_credit(I, [S - 1], [[None]], S)
    ops_for_layer = tracer.layer_ops(cap, cfg, d_hat)
    search = PathSearch(
        cap.comps, F0, cfg.path_min_frac * F0.abs().sum((2, 3)), max_nodes, keep_remainder=True
    )
    flow = sweep(cap, ops_for_layer, F0, search=search)
    R0, Rk = search.remainder
    rest = sweep(cap, ops_for_layer, R0, Fk=Rk)
    n_emb = cap.comps.n_emb
    lhs = search.terminal_credit(S) + rest.token_credit(n_emb)
    return rel_err(lhs, flow.token_credit(n_emb))


def forward_tolerance(tracer, tol: float) -> float:
    """Invariant 9's tolerance: both passes run in the math dtype on the same
    weights (:func:`check_9_forward`), so the float32 one, at least 1e-4."""
    return max(tol, 1e-4)


def validate_model(
    model=None, tokenizer=None, texts=None, dtype=None, tracer=None, tol=None
) -> list[Check]:
    """Every §9 invariant on ``texts`` (a few default prompts otherwise)."""
    from .tracer import Tracer

    tracer = tracer or Tracer(model=model, tokenizer=tokenizer, dtype=dtype)
    dtype = tracer.dtype
    tol = tol if tol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    texts = texts or DEFAULT_TEXTS
    texts = [t for t in texts if tracer.prepare(t, " the").ids]
    checks = [
        Check(
            name,
            err,
            tol if not name.startswith("9") else forward_tolerance(tracer, tol),
            None,
            info=name.startswith("9 info"),
        )
        for name, err in check_capture(tracer, texts, dtype)
    ]
    e8 = max(check_8_paths(tracer, t, dtype) for t in texts[:2])
    checks.append(Check("8 flow = paths + pruned remainder", e8, tol, None))
    for c in checks:
        c.ok = bool(c.worst_error <= c.tolerance) or c.info
    return sorted(checks, key=lambda c: c.name)
