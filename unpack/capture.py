"""One forward pass over a batch of prompts, from the adapter's weights, keeping
every tensor the method needs (docs/METHOD.md §1-5).

The pass is computed here, not hooked out of the Hugging Face module, so every
captured tensor is exactly the one the model used; §9 invariant 9 checks that the
logits equal the model's own forward pass. Prompts of different lengths are
right-padded: with causal attention a pad never influences an earlier position,
so each prompt's numbers equal those of tracing it alone.

Memory: the only tensor of size ``N·S·D`` is the writers buffer (every credited
component's output, written in place during the pass). Per layer the capture
keeps ``[B, S, D]`` and ``[B, H, S, d]`` tensors only; the attention
probabilities (``H·S²``) and the MLP activations (``S·F``) are recomputed from
them with the very same operations when a reader needs them, one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .adapters.base import LayerWeights, ModelSpec
from .components import Components

Tensor = torch.Tensor


def causal_mask(S: int, device=None, window: Optional[int] = None) -> Tensor:
    """``[S, S]`` boolean, True where key position s <= query position q (and, with a
    sliding ``window``, ``s > q − window``)."""
    m = torch.ones(S, S, dtype=torch.bool, device=device).tril()
    return m if window is None else m.triu(1 - window)


def softcap(x: Tensor, cap: Optional[float]) -> Tensor:
    """``c · tanh(x / c)`` (logit soft-capping), ``x`` itself when ``cap`` is None."""
    return x if cap is None else torch.tanh(x / cap) * cap


def expand_kv(x: Tensor, spec: ModelSpec, dim: int = 1) -> Tensor:
    """Repeat kv-head tensors along ``dim`` so head h sees kv head g(h)."""
    return x.repeat_interleave(spec.group_size, dim=dim) if spec.group_size > 1 else x


def head_inputs(x: Tensor, W: Tensor) -> Tensor:
    """``x [B, S, D] @ W[h] [D, d]`` for every head → ``[B, H, S, d]``: one batched
    GEMM reading each head's weights in place, whatever their strides (a fused
    per-head QKV matrix is never copied)."""
    B, S, D = x.shape
    out = torch.bmm(x.reshape(1, B * S, D).expand(W.shape[0], -1, -1), W)  # [H, B·S, d]
    out = out.view(W.shape[0], B, S, -1).transpose(0, 1)
    return out if B == 1 else out.contiguous()


def attention_logits(spec: ModelSpec, lw: LayerWeights, Q: Tensor, K: Tensor) -> Tensor:
    """``[B, H, S, S]``: ``scale · Q K^T`` before the soft-cap and the mask."""
    return lw.attn_scale * Q @ expand_kv(K, spec).transpose(-1, -2)


def attention_probs(spec: ModelSpec, lw: LayerWeights, Q: Tensor, K: Tensor) -> Tensor:
    """``A [B, H, S, S]``: causal (windowed) softmax of the soft-capped
    ``scale · Q K^T`` (the model's own)."""
    S = Q.shape[-2]
    logits = softcap(attention_logits(spec, lw, Q, K), lw.softcap)
    return logits.masked_fill(~causal_mask(S, Q.device, lw.window), float("-inf")).softmax(-1)


def run_mlp(mlp, y: Tensor):
    """``(h, act, pre, gate, up)`` of a plain or gated MLP on normed input ``y``, with
    ``h = Σ_j a_j W_out[:, j]`` (the output without ``b_out``)."""
    a, pre, gate, up = mlp_activations(mlp, y)
    return a @ mlp.W_out.T, a, pre, gate, up


def mlp_activations(mlp, y: Tensor):
    """``(a, pre, gate, up)``: the cells ``a_j`` and their pre-activations."""
    if mlp.gated:
        gate, up = y @ mlp.W_gate.T, y @ mlp.W_up.T
        return mlp.act(gate) * up, None, gate, up
    pre = y @ mlp.W_in.T
    if mlp.b_in is not None:
        pre = pre + mlp.b_in
    return mlp.act(pre), pre, None, None


@dataclass
class LayerCapture:
    spec: ModelSpec
    L: int
    dtype: torch.dtype
    Q: Tensor  # [B, H, S, d] actual queries (bias, qk-norm, rotary)
    K: Tensor  # [B, Hkv, S, d]
    V: Tensor  # [B, Hkv, S, d] (with bias)
    z: Tensor  # [B, H, S, d] mixed values A·V per head
    sigma_attn: Tensor  # [B, S] σ of the attention's input residual
    sigma_mlp: Tensor  # [B, S] σ of the MLP's input residual
    attn_out: Tensor  # [B, S, D] Σ_h z_h W_O[h] (no bias, before any post-norm)
    mlp_h: Tensor  # [B, S, D] Σ_j a_j W_out[:, j], the output without its bias
    resid_pre: Tensor  # [B, S, D] the attention's input residual
    resid_mlp_in: Tensor  # [B, S, D] the MLP's input residual
    cells: Optional[tuple] = None  # (a, pre, gate, up) kept when small (see KEEP_CELLS)
    cos: Optional[Tensor] = None  # [S, rot] this layer's rotary tables
    sin: Optional[Tensor] = None
    sigma_q: Optional[Tensor] = None  # [B, H, S] qk-norm scale of the queries
    sigma_k: Optional[Tensor] = None  # [B, Hkv, S] of the keys
    sigma_attn_post: Optional[Tensor] = None  # [B, S] post-attention norm's σ(attn_out)
    sigma_mlp_post: Optional[Tensor] = None  # [B, S] post-feedforward norm's σ(mlp output)

    def weights(self) -> LayerWeights:
        return self.spec.layers[self.L].cast(self.dtype)

    @property
    def A(self) -> Tensor:
        """``[B, H, S, S]`` attention probabilities, recomputed exactly as in the pass."""
        return attention_probs(self.spec, self.weights(), self.Q, self.K)

    def mlp_cells(self, lw: Optional[LayerWeights] = None):
        """``(a, pre, gate, up)``: kept from the pass, or recomputed from the MLP's input
        with the very same operations."""
        if self.cells is not None:
            return self.cells
        lw = lw or self.weights()
        return mlp_activations(lw.mlp, lw.ln_mlp(self.resid_mlp_in))

    @property
    def act(self) -> Tensor:
        return self.mlp_cells()[0]

    @property
    def pre(self) -> Optional[Tensor]:
        return self.mlp_cells()[1]

    @property
    def gate(self) -> Optional[Tensor]:
        return self.mlp_cells()[2]

    @property
    def up(self) -> Optional[Tensor]:
        return self.mlp_cells()[3]

    @property
    def mlp_out(self) -> Tensor:
        """``[B, S, D]``: the MLP's output with its bias, as written to the residual
        (through the post-feedforward norm where there is one)."""
        lw = self.weights()
        return post_normed(lw.ln_mlp_post, with_bias(self.mlp_h, lw.mlp.b_out), self.sigma_mlp_post)

    @property
    def head_out(self) -> Tensor:
        """``[B, H, S, D]``: ``z_h W_O[h]``, no bias, as written to the residual
        (``γ ⊙ z_h W_O[h] / σ(attn_out)`` through a post-attention norm)."""
        lw = self.weights()
        return post_normed(
            lw.ln_attn_post, torch.einsum("bhsd,hdD->bhsD", self.z, lw.W_O), self.sigma_attn_post
        )


@dataclass
class Capture:
    spec: ModelSpec
    comps: Components
    input_ids: Tensor  # [B, S]
    lengths: Tensor  # [B]
    writers: Tensor  # [B, N, S, D] credited components' outputs, comps.names order
    Z: Tensor  # [B, L, H, S, d] every layer's mixed values z_h = A·V
    centered: bool  # writers hold ĉ (centered over D for LayerNorm models) instead of c
    layers: list[LayerCapture]
    resid_final: Tensor  # [B, S, D]
    sigma_final: Tensor  # [B, S]
    logits_t: Tensor  # [B, V] logits at each prompt's last position
    logits_raw_t: Optional[Tensor]  # [B, V] the same before the final soft-cap (None without one)
    cos: Optional[Tensor]  # [S, rot]
    sin: Optional[Tensor]
    logits: Optional[Tensor] = None  # [B, S, V] when asked for

    @property
    def dtype(self) -> torch.dtype:
        return self.writers.dtype

    @property
    def device(self) -> torch.device:
        return self.writers.device

    @property
    def embed(self) -> Tensor:
        return self.writers[:, 0]

    @property
    def pos(self) -> Optional[Tensor]:
        return self.writers[:, 1] if self.comps.has_pos else None

    @property
    def t(self) -> Tensor:
        """Target position of each prompt: its last real token."""
        return self.lengths - 1

    def all_writers(self) -> Tensor:
        """``[B, N_all, S, D]`` in ``comps.all_names`` order (bias components included),
        as written (uncentered: capture with ``center=False``)."""
        if self.centered:
            raise ValueError("all_writers needs a capture made with center=False")
        B, S = self.input_ids.shape
        comps, W = self.comps, self.writers
        parts = [W[:, : comps.n_emb]]
        for L in range(self.spec.n_layers):
            slot = comps.head_slot(L)
            parts.append(W[:, slot : slot + comps.n_heads])
            lw = self.spec.layers[L]
            if lw.b_O is not None:  # through the post-norm: γ ⊙ b_O / σ_post
                b_O = lw.b_O.to(self.dtype).expand(B, 1, S, -1)
                post = None if lw.ln_attn_post is None else lw.ln_attn_post.cast(self.dtype)
                parts.append(post_normed(post, b_O, self.layers[L].sigma_attn_post))
            parts.append(W[:, comps.mlp_slot(L)][:, None])
        return torch.cat(parts, dim=1)


# Keep every layer's MLP cells (a, pre / gate, up) from the pass while they take at
# most this many bytes; beyond it they are recomputed one layer at a time.
KEEP_CELLS = 256 << 20


def unembed(x: Tensor, W_U: Tensor, b_U: Optional[Tensor], rows: int = 8192) -> Tensor:
    """``x @ W_U^T + b_U`` in ``x``'s dtype, casting ``W_U`` a block of rows at a
    time (no full-precision copy of a large unembedding)."""
    outs = [x @ W_U[i : i + rows].to(x.dtype).T for i in range(0, W_U.shape[0], rows)]
    out = torch.cat(outs, -1)
    return out + b_U.to(x.dtype) if b_U is not None else out


def unembed_mean(W_U: Tensor, dtype: torch.dtype, rows: int = 8192) -> Tensor:
    """``mean_v W_U[v]`` in ``dtype``, a block of rows at a time."""
    total = torch.zeros(W_U.shape[1], dtype=dtype, device=W_U.device)
    for i in range(0, W_U.shape[0], rows):
        total += W_U[i : i + rows].to(dtype).sum(0)
    return total / W_U.shape[0]


def with_bias(x: Tensor, b: Optional[Tensor]) -> Tensor:
    """``x + b`` where there is a bias ``b``, else ``x``."""
    return x + b if b is not None else x


def rotary_tables(spec: ModelSpec, S: int, dtype: torch.dtype, rotary=None):
    """``(cos, sin)`` ``[S, rot]`` of positions ``0 .. S-1`` in ``dtype`` of ``rotary``
    (default: the model's; None, None for a model without rotary embedding)."""
    rotary = rotary or spec.rotary
    if rotary is None:
        return None, None
    cos, sin = rotary.cos_sin(torch.arange(S, device=spec.W_E.device))
    return cos.to(dtype), sin.to(dtype)


def layer_tables(spec: ModelSpec, S: int, dtype: torch.dtype) -> list:
    """Every layer's ``(cos, sin)``, computed once per distinct rotary embedding
    (local and global layers may have their own bases)."""
    made: dict = {}
    for lw in spec.layers:
        if id(lw.rotary) not in made:
            made[id(lw.rotary)] = (
                rotary_tables(spec, S, dtype, lw.rotary) if lw.rotary else (None, None)
            )
    return [made[id(lw.rotary)] for lw in spec.layers]


def qkv(spec: ModelSpec, lw: LayerWeights, h: Tensor, cos: Optional[Tensor], sin: Optional[Tensor]):
    """``(Q [B,H,S,d], K, V [B,Hkv,S,d], σ_q, σ_k)``: the actual queries, keys and
    values of the normed input ``h`` (docs/METHOD.md §4): biases in, the qk-norm
    (``σ_q [B,H,S]``, ``σ_k [B,Hkv,S]``, None without one), rotary on Q and K."""
    Q = with_bias(head_inputs(h, lw.W_Q), None if lw.b_Q is None else lw.b_Q[:, None])
    K = with_bias(head_inputs(h, lw.W_K), None if lw.b_K is None else lw.b_K[:, None])
    V = with_bias(head_inputs(h, lw.W_V), None if lw.b_V is None else lw.b_V[:, None])
    sq = sk = None
    if lw.q_norm is not None:
        sq = lw.q_norm.scale(Q)
        Q = lw.q_norm.apply(Q, sq)
    if lw.k_norm is not None:
        sk = lw.k_norm.scale(K)
        K = lw.k_norm.apply(K, sk)
    if lw.rotary is not None:
        Q, K = lw.rotary.apply(Q, cos, sin), lw.rotary.apply(K, cos, sin)
    return Q, K, V, sq, sk


def attention(spec: ModelSpec, lw: LayerWeights, x: Tensor, cos, sin, out: Optional[Tensor] = None):
    """``(Q, K, V, z, σ_q, σ_k)`` of one layer's attention on the residual ``x``:
    ``z [B,H,S,d]`` are the mixed values ``A·V`` of every head (written into ``out``
    when given)."""
    Q, K, V, sq, sk = qkv(spec, lw, lw.ln_attn(x), cos, sin)
    z = torch.matmul(attention_probs(spec, lw, Q, K), expand_kv(V, spec), out=out)
    return Q, K, V, z, sq, sk


def post_normed(norm, out: Tensor, sigma: Optional[Tensor]) -> Tensor:
    """``γ ⊙ out / σ`` (a post-sublayer RMSNorm given its scale ``σ [B, S]``, which
    comes from the whole sublayer output), ``out`` itself without a post-norm.
    ``out`` may have a writers axis: ``[B, S, D]`` or ``[B, N, S, D]``."""
    if norm is None:
        return out
    sig = sigma[:, :, None] if out.dim() == 3 else sigma[:, None, :, None]
    return out * norm.weight / sig


def post_scale(norm, total: Tensor) -> Optional[Tensor]:
    """``σ [B, S]`` of a post-sublayer norm on the sublayer's whole output ``total``."""
    return None if norm is None else norm.scale(total)


def mlp_block(spec: ModelSpec, lw: LayerWeights, x: Tensor, attn: Tensor):
    """``(mlp_in, h, cells, out, σ_post)`` of one layer's MLP: its input residual
    (``x``, plus the attention output ``attn`` when sequential), ``h`` without
    ``b_out``, the cells ``(a, pre, gate, up)``, the output with ``b_out`` as written
    to the residual and the post-feedforward norm's scale (None without one)."""
    mlp_in = x if spec.parallel else x + attn
    h, *cells = run_mlp(lw.mlp, lw.ln_mlp(mlp_in))
    out = with_bias(h, lw.mlp.b_out)
    sig = post_scale(lw.ln_mlp_post, out)
    return mlp_in, h, cells, post_normed(lw.ln_mlp_post, out, sig), sig


def attn_block(lw: LayerWeights, heads: Tensor):
    """``(raw, written, σ_post)`` of the attention output from the heads' outputs
    ``heads [B, H, S, D]`` (``z_h W_O[h]``, rescaled in place through a post-norm):
    ``raw = Σ_h z_h W_O[h]``, ``written`` what joins the residual (bias in)."""
    raw = heads.sum(1)
    total = with_bias(raw, lw.b_O)
    sig = post_scale(lw.ln_attn_post, total)
    if sig is not None:
        heads.copy_(post_normed(lw.ln_attn_post, heads, sig))
        return raw, post_normed(lw.ln_attn_post, total, sig), sig
    return raw, total, None


def final_logits(spec: ModelSpec, normed: Tensor) -> Tensor:
    """Logits of the normed final residual: unembedding, bias, soft-cap."""
    return softcap(unembed(normed, spec.W_U, spec.b_U), spec.final_softcap)


def last_logits(
    spec: ModelSpec, x: Tensor, lengths: Tensor, dtype: torch.dtype, raw: bool = False
) -> Tensor:
    """``[B, V]``: the logits at each prompt's last real position of the final residual ``x``
    (``raw``: before the final soft-cap)."""
    final_t = spec.ln_final.cast(dtype)(x[torch.arange(x.shape[0], device=x.device), lengths - 1])
    return unembed(final_t, spec.W_U, spec.b_U) if raw else final_logits(spec, final_t)


def embed(spec: ModelSpec, input_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """``W_E[token] · embed_scale`` in ``dtype``."""
    e = spec.W_E[input_ids].to(dtype)
    return e * spec.embed_scale if spec.embed_scale != 1.0 else e


def _embed(spec: ModelSpec, input_ids: Tensor, W: Tensor) -> Tensor:
    """Write the embeddings into the writers buffer ``W``; returns the first residual."""
    W[:, 0] = embed(spec, input_ids, W.dtype)
    x = W[:, 0].clone()
    if spec.W_pos is not None:
        W[:, 1] = spec.W_pos[: input_ids.shape[1]].to(W.dtype)
        x = x + W[:, 1]
    return x


def _center_in_place(spec: ModelSpec, W: Tensor) -> None:
    """``ĉ`` in the writers buffer, one prompt at a time (no second ``N·S·D`` buffer)."""
    for b in range(W.shape[0]):
        spec.ln_final.center(W[b], out=W[b])


@torch.no_grad()
def capture(
    spec: ModelSpec,
    input_ids: Tensor,
    lengths: Tensor,
    dtype=torch.float32,
    full_logits: bool = False,
    center: bool = True,
) -> Capture:
    """Run the model described by ``spec`` on right-padded ``input_ids [B, S]``.

    ``center``: leave ``ĉ`` (docs/METHOD.md §3) in the writers buffer, centered in place
    for LayerNorm models. The residuals are always kept (``[B, S, D]`` per layer)."""
    B, S = input_ids.shape
    F = spec.layers[0].mlp.W_out.shape[1]
    keep_cells = (
        B * S * F * spec.n_layers * 3 * torch.empty((), dtype=dtype).element_size() <= KEEP_CELLS
    )
    dev = spec.W_E.device
    input_ids, lengths = input_ids.to(dev), lengths.to(dev)
    comps = Components.from_spec(spec)
    W = torch.empty(B, len(comps), S, spec.d_model, dtype=dtype, device=dev)
    x = _embed(spec, input_ids, W)
    tables = layer_tables(spec, S, dtype)
    layers = []
    Z = torch.empty(B, spec.n_layers, spec.n_heads, S, spec.d_head, dtype=dtype, device=dev)
    for L, lw in enumerate(spec.layers):
        lw = lw.cast(dtype)
        cos, sin = tables[L]
        Q, K, V, z, sq, sk = attention(spec, lw, x, cos, sin, out=Z[:, L])
        slot = comps.head_slot(L)
        heads = W[:, slot : slot + spec.n_heads]
        heads.copy_(torch.einsum("bhsd,hdD->bhsD", z, lw.W_O))
        attn_out, attn_b, sig_ap = attn_block(lw, heads)
        mlp_in, h_mlp, cells, out, sig_mp = mlp_block(spec, lw, x, attn_b)
        W[:, comps.mlp_slot(L)] = out
        layers.append(
            LayerCapture(
                spec=spec,
                L=L,
                dtype=dtype,
                Q=Q,
                K=K,
                V=V,
                z=z,
                sigma_attn=lw.ln_attn.scale(x),
                sigma_mlp=lw.ln_mlp.scale(mlp_in),
                attn_out=attn_out,
                mlp_h=h_mlp,
                resid_pre=x,
                resid_mlp_in=mlp_in,
                cells=cells if keep_cells else None,
                cos=cos,
                sin=sin,
                sigma_q=sq,
                sigma_k=sk,
                sigma_attn_post=sig_ap,
                sigma_mlp_post=sig_mp,
            )
        )
        x = x + attn_b + out
        del lw
    logits_raw_t = last_logits(spec, x, lengths, dtype, raw=True)
    logits_t = softcap(logits_raw_t, spec.final_softcap)
    ln_f = spec.ln_final.cast(dtype)
    full = final_logits(spec, ln_f(x)) if full_logits else None
    cos, sin = rotary_tables(spec, S, dtype)
    if center:
        _center_in_place(spec, W)  # RMSNorm: ĉ = c, nothing to do
    return Capture(
        spec=spec,
        comps=comps,
        input_ids=input_ids,
        lengths=lengths,
        writers=W,
        Z=Z,
        centered=center,
        layers=layers,
        resid_final=x,
        sigma_final=ln_f.scale(x),
        logits_t=logits_t,
        logits_raw_t=logits_raw_t if spec.final_softcap else None,
        cos=cos,
        sin=sin,
        logits=full,
    )
