"""Shapes and arithmetic costs of the decomposition, shared by the engine (which
contraction to use for the K/Q scores, how many query positions per chunk) and
the planner (``unpack plan``: memory and time before anything runs).

Counts are multiply-adds (MACs) per batch; ``B`` prompts, ``S`` positions,
``C`` eligible writers of a reader, ``P = (H + Hkv)·d`` the width of a writer
projected into the reader's key and query spaces (docs/METHOD.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("fold", "project", "virtual")
# Elements of one chunk of query positions' K/Q score buffers. Larger chunks read
# every source's projected keys fewer times (12 layers, width 768, 256 tokens: 16M
# elements ran 13% faster than 4M in one run); the rotary fold's per-pair
# vectors keep the smaller bound (ROTARY_FOLD_ELEMENTS), they are D wide.
CHUNK_ELEMENTS = 1 << 24
ROTARY_FOLD_ELEMENTS = 1 << 22
# Largest [B, ...] score buffer a batch may build (elements) before the tracer
# splits it. Past it, memory traffic makes a batch slower per prompt than one
# prompt alone on a CPU.
BATCH_BUDGET = 2_500_000
# The fold cuts each chunk's query range into this many GEMMs, each over the
# sources its queries can see (causal).
FOLD_BLOCKS = 4


@dataclass(frozen=True)
class Shape:
    """The facts about a model that set its cost (no weights needed)."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab: int
    gated: bool
    rotary: bool
    has_pos: bool
    parallel: bool
    n_params: int
    weight_bytes: int = 4  # bytes per weight element (2 for bf16/fp16)

    @property
    def n_emb(self) -> int:
        return 2 if self.has_pos else 1

    @property
    def n_components(self) -> int:
        return self.n_emb + self.n_layers * (self.n_heads + 1)

    @property
    def proj_width(self) -> int:
        return (self.n_heads + self.n_kv_heads) * self.d_head

    def n_writers_attn(self, L: int) -> int:
        return self.n_emb + L * (self.n_heads + 1)

    @classmethod
    def from_spec(cls, spec, n_params: int | None = None) -> "Shape":
        lw = spec.layers[0]
        d_mlp = (lw.mlp.W_gate if lw.mlp.gated else lw.mlp.W_in).shape[0]
        if n_params is None:
            tied = spec.W_U is spec.W_E or (
                spec.W_U.device.type != "meta" and spec.W_U.data_ptr() == spec.W_E.data_ptr()
            )
            n_params = (
                spec.W_E.numel()
                + (0 if tied else spec.W_U.numel())
                + (spec.W_pos.numel() if spec.W_pos is not None else 0)
                + sum(
                    t.numel()
                    for lw in spec.layers
                    for t in (lw.W_Q, lw.W_K, lw.W_V, lw.W_O, lw.mlp.W_out)
                )
                + sum(
                    (lw.mlp.W_gate.numel() * 2 if lw.mlp.gated else lw.mlp.W_in.numel())
                    for lw in spec.layers
                )
            )
        return cls(
            spec.family,
            spec.n_layers,
            spec.n_heads,
            spec.n_kv_heads,
            spec.d_model,
            spec.d_head,
            d_mlp,
            spec.W_U.shape[0],
            lw.mlp.gated,
            spec.rotary is not None,
            spec.W_pos is not None,
            spec.parallel,
            int(n_params),
            spec.W_E.element_size(),
        )


def virtual_bytes(shape: Shape, elem: int = 4) -> int:
    """Bytes of every virtual weight ``W_O[h'] P Γ [W_K | W_Q]`` of the model (all
    pairs writer layer < reader layer), as the engine would cache them."""
    L, H, d = shape.n_layers, shape.n_heads, shape.d_head
    return L * (L - 1) // 2 * H * d * shape.proj_width * elem


def scored_pairs(S: int, rows: int, mode: str) -> float:
    """(query, source) pairs a reader's K or Q side actually scores, per head and
    writer: each chunk of ``rows`` queries is scored against every source up to its
    last query, the fold in :data:`FOLD_BLOCKS` causal blocks."""
    per_chunk = min(rows, S) / (FOLD_BLOCKS if mode == "fold" else 1)
    return S * (S + per_chunk) / 2


def kq_costs(
    shape: Shape, L: int, B: int, S: int, vw_cached: bool, chunk_elements: int = CHUNK_ELEMENTS
) -> dict[str, float]:
    """MACs of the K and Q scores of reader layer ``L`` by each contraction (only
    the pairs :func:`scored_pairs` counts are formed)."""
    H, D, d, P = shape.n_heads, shape.d_model, shape.d_head, shape.proj_width
    C = shape.n_writers_attn(L)
    Ch = L * H  # head writers
    Cm = C - Ch  # full-rank writers: embeddings and MLPs
    pairs = {m: scored_pairs(S, chunk_rows(shape, L, B, S, m, chunk_elements), m) for m in MODES}
    fold = 2 * C * H * pairs["fold"] * D  # a D-dot per (writer, head, q, s), both sides
    if shape.rotary:  # one D-vector W R_s^T Q per (h, q, s) on each side
        fold += 2 * H * pairs["fold"] * D * d
    project = C * S * D * P + 2 * C * H * pairs["project"] * d
    virtual = Cm * S * D * P + Ch * S * d * P + 2 * C * H * pairs["virtual"] * d
    if not vw_cached:
        virtual += Ch * d * D * P / B  # built once per batch
    return {"fold": B * fold, "project": B * project, "virtual": B * virtual}


def batch_sizes(shape: Shape, lengths: list[int], batch_size: int) -> list[int]:
    """How the tracer cuts prompts (sorted by length) into batches: at most
    ``batch_size`` each, and a batch's largest score buffer (``B·H·S²`` times the
    writers, or the rotary fold's ``D``) within :data:`BATCH_BUDGET`."""
    width = max(shape.n_components, shape.d_model if shape.rotary else 0)
    sizes: list[int] = []
    n = 0
    for S in lengths:
        if n and (n >= batch_size or (n + 1) * shape.n_heads * S * S * width > BATCH_BUDGET):
            sizes.append(n)
            n = 0
        n += 1
    return sizes + [n] if n else sizes


def proj_bytes(shape: Shape, L: int, B: int, S: int, elem: int = 4) -> int:
    """Bytes of the writers projected into head space (project and virtual modes)."""
    return B * shape.n_writers_attn(L) * S * shape.proj_width * elem


def choose_mode(
    shape: Shape,
    L: int,
    B: int,
    S: int,
    vw_cached: bool,
    max_proj_bytes: int,
    elem: int = 4,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> str:
    """The cheapest K/Q contraction whose buffers fit (fold always fits: it is chunked)."""
    costs = kq_costs(shape, L, B, S, vw_cached, chunk_elements)
    if proj_bytes(shape, L, B, S, elem) > max_proj_bytes:
        return "fold"
    return min(MODES, key=lambda m: costs[m])


def chunk_rows(shape: Shape, L: int, B: int, S: int, mode: str, max_elements: int) -> int:
    """Query positions per chunk so that one chunk's K and Q scores ``[B, C, H, rows, S]``
    stay near ``max_elements`` and, for the rotary fold, its ``[B, H, rows, S, D]``
    folded vectors near ``ROTARY_FOLD_ELEMENTS``."""
    C, H = shape.n_writers_attn(L), shape.n_heads
    rows = max_elements // max(B * H * S * C * 2, 1)
    if mode == "fold" and shape.rotary:
        rows = min(rows, ROTARY_FOLD_ELEMENTS // max(B * H * S * shape.d_model, 1))
    return max(1, min(S, rows))


def shape_of(spec) -> Shape:
    """The :class:`Shape` of a ModelSpec (computed once, kept on the spec)."""
    shape = spec.extras.get("shape")
    if shape is None:
        shape = spec.extras["shape"] = Shape.from_spec(spec)
    return shape
