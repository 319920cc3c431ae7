"""Component names, layer indices and eligibility (docs/METHOD.md §1).

Two orders are used. ``all_names`` lists every writer into the residual stream,
bias components included (for closure checks). ``names`` lists the *credited*
components (no bias ones) in this order::

    embedding, [pos_embedding], attn_0_head_0 .. attn_0_head_{H-1}, mlp_0, attn_1_head_0, ...

With that order the eligible writers of every reader are a prefix of ``names``,
so "writers of reader r" is simply ``names[:n_writers(r)]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import InputError

_HEAD = re.compile(r"^attn_(\d+)_head_(\d+)$")
_BIAS = re.compile(r"^attn_(\d+)_bias$")
_MLP = re.compile(r"^mlp_(\d+)$")


def parse_component(name: str) -> tuple[str, int | None, int | None]:
    """``(kind, layer, head)`` of a component name; kind is one of
    ``embedding, pos_embedding, head, attn_bias, mlp``. Raises InputError if unknown."""
    if name in ("embedding", "pos_embedding"):
        return name, None, None
    if m := _HEAD.match(name):
        return "head", int(m[1]), int(m[2])
    if m := _BIAS.match(name):
        return "attn_bias", int(m[1]), None
    if m := _MLP.match(name):
        return "mlp", int(m[1]), None
    raise InputError(
        f"unknown component {name!r}: expected embedding, pos_embedding, "
        "attn_{L}_head_{h}, attn_{L}_bias or mlp_{L}"
    )


_SHORT = {"embedding": "emb", "pos_embedding": "pos"}


def short_label(name: str) -> str:
    """A component's label in figures: ``attn_9_head_6`` -> ``9.6``, ``mlp_3`` ->
    ``m3``, ``embedding`` -> ``emb``, ``pos_embedding`` -> ``pos``; any other
    name (a bias component, a root spec) unchanged."""
    try:
        kind, L, h = parse_component(name)
    except InputError:
        return name
    if kind == "head":
        return f"{L}.{h}"
    if kind == "mlp":
        return f"m{L}"
    return _SHORT.get(name, name)


def sort_key(name: str) -> tuple:
    """Sort key of the reading order: the embeddings, then per layer its heads in
    order, its attention bias, its MLP; names that are no component last."""
    try:
        kind, L, h = parse_component(name)
    except InputError:
        return (10**6, 0, 0)
    if L is None:
        return (-1, 0 if kind == "embedding" else 1, 0)
    return (L, {"head": 0, "attn_bias": 1, "mlp": 2}[kind], h or 0)


def layer_index(name: str, parallel: bool) -> float:
    """The §1 layer index: -1 for embeddings, ``L`` for the attention of layer
    ``L``, ``L + 0.5`` for ``mlp_L`` in a sequential block and ``L`` in a
    parallel one (docs/METHOD.md §1)."""
    kind, L, _ = parse_component(name)
    if L is None:
        return -1.0
    return L + 0.5 if kind == "mlp" and not parallel else float(L)


def layer_head(name: str) -> tuple[int, int | None]:
    """``(layer, head)`` as the store's columns hold them: layer -1 for the
    embeddings, head None for anything but a head."""
    _, L, h = parse_component(name)
    return (-1 if L is None else L), h


def attrs(name: str, parallel: bool) -> dict:
    """``kind``, ``layer`` (-1 for embeddings), ``head`` (None if not a head) and
    ``depth`` (the §1 :func:`layer_index`) of a component name."""
    kind = parse_component(name)[0]
    L, h = layer_head(name)
    return dict(kind=kind, layer=L, head=h, depth=layer_index(name, parallel))


@dataclass
class Components:
    n_layers: int
    n_heads: int
    has_pos: bool
    attn_bias: list[bool]  # per layer: does it have an output bias component
    parallel: bool
    names: list[str] = field(init=False)
    all_names: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self):
        emb = ["embedding"] + (["pos_embedding"] if self.has_pos else [])
        self.names = list(emb)
        self.all_names = list(emb)
        for L in range(self.n_layers):
            heads = [f"attn_{L}_head_{h}" for h in range(self.n_heads)]
            self.names += heads + [f"mlp_{L}"]
            self.all_names += (
                heads + ([f"attn_{L}_bias"] if self.attn_bias[L] else []) + [f"mlp_{L}"]
            )
        self.index = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_spec(cls, spec) -> "Components":
        return cls(
            spec.n_layers,
            spec.n_heads,
            spec.W_pos is not None,
            [lw.b_O is not None for lw in spec.layers],
            spec.parallel,
        )

    @property
    def n_emb(self) -> int:
        return 2 if self.has_pos else 1

    def __len__(self) -> int:
        return len(self.names)

    def head_slot(self, L: int, h: int = 0) -> int:
        """Index in ``names`` of ``attn_{L}_head_{h}``; heads of a layer are contiguous."""
        return self.n_emb + L * (self.n_heads + 1) + h

    def mlp_slot(self, L: int) -> int:
        return self.n_emb + L * (self.n_heads + 1) + self.n_heads

    def n_writers_attn(self, L: int) -> int:
        """Credited writers read by the attention of layer L (layer index < L)."""
        return self.n_emb + L * (self.n_heads + 1)

    def n_writers_mlp(self, L: int) -> int:
        """Credited writers read by ``mlp_L``: index < L + 0.5 (sequential) or < L (parallel)."""
        return self.n_writers_attn(L) + (0 if self.parallel else self.n_heads)

    def layer_index(self, name: str) -> float:
        return layer_index(name, self.parallel)

    def is_embedding(self, i: int) -> bool:
        return i < self.n_emb

    def check(self, name: str) -> int:
        """Index of a credited component; a clear error for bias or unknown names."""
        kind, L, h = parse_component(name)
        if kind == "attn_bias":
            raise InputError(
                f"component {name!r} is a bias component: bias components are "
                "never credited (docs/METHOD.md §1); pick a head, an MLP or an embedding"
            )
        if name not in self.index:
            raise InputError(
                f"component {name!r} does not exist in this model "
                f"({self.n_layers} layers, {self.n_heads} heads"
                f"{', no pos_embedding' if not self.has_pos else ''})"
            )
        return self.index[name]
