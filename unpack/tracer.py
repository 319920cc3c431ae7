"""The public API: ``Tracer(model).trace(text, target=..., ...)`` (METHOD.md §3-8)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from . import decompose as dec
from . import fused
from .adapters import build_spec
from .capture import Capture, capture, unembed_mean
from .components import Components
from .config import Config, make_config
from .cost import batch_sizes, shape_of
from .errors import InputError
from .finite import NonFiniteError, non_finite
from .kernels import EngineOptions, VirtualWeights
from .flow import MODES, Flow, credit_summary, initial_credit, sweep
from .paths import Path, PathSearch, truncation_notice
from .plan import path_bytes
from .profile import Profile, per_prompt
from .tokens import encode

Tensor = torch.Tensor


@dataclass
class Prepared:
    """A tokenized, validated prompt with the roots to trace (None = the seeds)."""

    text: str
    ids: list[int]
    tokens: list[str]
    target: str
    target_id: int
    distractor: Optional[str]
    distractor_id: Optional[int]
    roots: list[Optional[tuple[str, int, int]]]  # (name@pos as given, component index, position)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TraceFailure:
    """A prompt that could not be traced (``trace_batch(..., on_error="collect")``)."""

    index: int
    prompt: dict
    error: str


@dataclass
class TraceResult:
    text: str
    target: str
    distractor: Optional[str]
    root: Optional[str]
    target_id: int
    distractor_id: Optional[int]
    tokens: list[str]
    token_ids: list[int]
    target_pos: int
    token_credit: np.ndarray
    token_credit_pct: np.ndarray
    suppression: float
    seeds: dict[str, float]
    component_flow: dict[str, np.ndarray]
    edges: "object"  # pandas.DataFrame
    position_edges: "object"
    paths: list[Path]
    paths_truncated: bool
    target_prob: float
    target_logit: float
    logit_diff: Optional[float]
    config: dict
    timing: dict
    warnings: list[str]
    path_credit: np.ndarray = None  # Σ of the complete paths found, per source position

    def to_frame(self):
        """One row per token: position, token, id, raw and percent credit."""
        import pandas as pd

        return pd.DataFrame(
            {
                "position": np.arange(len(self.tokens)),
                "token": self.tokens,
                "token_id": self.token_ids,
                "credit": self.token_credit,
                "credit_pct": self.token_credit_pct,
            }
        )

    def to_dict(self) -> dict:
        """JSON-ready; edges aggregated over positions."""
        d = {
            "text": self.text,
            "target": self.target,
            "distractor": self.distractor,
            "root": self.root,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "target_pos": self.target_pos,
            "token_credit": self.token_credit.tolist(),
            "token_credit_pct": self.token_credit_pct.tolist(),
            "suppression": self.suppression,
            "paths": [p.to_dict() for p in self.paths],
            "paths_truncated": self.paths_truncated,
            "component_flow": {k: float(v.sum()) for k, v in self.component_flow.items()},
            "edges": self.edges.to_dict(orient="records"),
            "seeds": self.seeds,
            "target_prob": self.target_prob,
            "target_logit": self.target_logit,
            "logit_diff": self.logit_diff,
            "config": self.config,
            "timing": self.timing,
            "warnings": self.warnings,
        }
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        lines = [
            f"prompt: {self.text!r}",
            f"target: {self.target!r}"
            + (f" vs {self.distractor!r}" if self.distractor else "")
            + f"   p(target)={self.target_prob:.4f}"
            + (f"   logit diff={self.logit_diff:+.3f}" if self.logit_diff is not None else ""),
            f"root: {self.root or 'seeds (target logit)'}   suppression={self.suppression:.3f}",
            "token credit:",
        ]
        for i, (tok, c, p) in enumerate(zip(self.tokens, self.token_credit, self.token_credit_pct)):
            bar = "+" * min(40, int(abs(p) / 2.5)) if c >= 0 else "-" * min(40, int(abs(p) / 2.5))
            lines.append(f"  {i:>3} {tok!r:>16} {c:+10.4f} {p:+8.2f}%  {bar}")
        lines.append(
            f"top {len(self.paths)} paths"
            + (" (truncated search)" if self.paths_truncated else "")
            + ":"
        )
        for p in self.paths:
            lines.append(f"  {p.score:+10.4f} {p.score_pct:+8.2f}%  {p.chain}")
        t = self.timing
        lines.append("timing: " + "  ".join(f"{k}={v:.3f}s" for k, v in t.items()))
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)

    def print(self):
        print(str(self))

    def _repr_html_(self) -> str:
        """Jupyter's display: token strip in colour, top paths with K/Q/V labels."""
        from .display import trace_html

        return trace_html(self)


class Tracer:
    """Unpack on one model. ``Tracer("dir-or-name")`` or ``Tracer(model=..., tokenizer=...)``.

    ``dtype`` is the dtype of the decomposition math (fp32 by default; fp64 when
    the model is fp64); weights stay in the model's dtype and are cast one layer
    at a time.

    Creating a Tracer turns on flush-to-zero for subnormal floats
    (``torch.set_flush_denormal(True)``, process-wide): on CPUs subnormals slow the
    arithmetic 10x or more (random models produce many), and they lie far below
    every threshold of the method (1e-14).
    """

    def __init__(
        self,
        model_name_or_path=None,
        *,
        model=None,
        tokenizer=None,
        dtype=None,
        device=None,
        weights_dtype=None,
    ):
        if model_name_or_path is not None and model is not None:
            raise InputError("give either a model name/path or model=..., not both")
        if isinstance(model_name_or_path, str):
            from .loading import load_model

            model, tokenizer = load_model(
                model_name_or_path, dtype=weights_dtype, device=device or "cpu"
            )
        elif model_name_or_path is not None:
            model = model_name_or_path
        if model is None or tokenizer is None:
            raise InputError("Tracer needs a model name/path, or both model=... and tokenizer=...")
        self.model, self.tokenizer = model.eval(), tokenizer
        torch.set_flush_denormal(True)
        self.spec = build_spec(model)
        self.comps = Components.from_spec(self.spec)
        pdtype = self.spec.W_E.dtype
        self.dtype = dtype or (torch.float64 if pdtype == torch.float64 else torch.float32)
        self.device = self.spec.W_E.device
        self.W_U_mean = unembed_mean(self.spec.W_U, self.dtype)  # mean_v W_U[v] (§3)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.engine = EngineOptions(vws=VirtualWeights(self.spec, self.dtype))

    # ------------------------------------------------------------------ input
    def _encode_target(self, s: str, what: str, warnings: list[str]) -> int:
        if not isinstance(s, str) or s == "":
            raise InputError(
                f"{what} is empty: give the {what} as text, e.g. ' Mary' (with its leading space)"
            )
        ids, _ = encode(self.tokenizer, s)
        if not ids:
            raise InputError(
                f"{what} {s!r} encodes to no token: give a string the tokenizer can encode"
            )
        if len(ids) > 1:
            first = self.tokenizer.decode(ids[:1])
            warnings.append(
                f"{what} {s!r} encodes to {len(ids)} tokens; using the first, {first!r}"
            )
        return ids[0]

    def _parse_root(self, root: str, n: int) -> tuple[str, int, int]:
        if not isinstance(root, str) or "@" not in root:
            raise InputError(
                f"root {root!r} must look like COMPONENT@POSITION, e.g. attn_9_head_9@13"
            )
        name, _, p = root.rpartition("@")
        idx = self.comps.check(name)
        try:
            pos = int(p)
        except ValueError:
            raise InputError(f"root {root!r}: position {p!r} is not an integer") from None
        if not -n <= pos < n:
            raise InputError(
                f"root {root!r}: position {pos} is out of range for a prompt of "
                f"{n} tokens (use 0..{n - 1}, or negative positions from the end)"
            )
        return root, idx, pos % n

    def prepare(
        self, text: str, target: str, distractor: Optional[str] = None, roots=(None,)
    ) -> Prepared:
        """Tokenize and check one prompt; every problem is an InputError naming it."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("text is empty: give a prompt with at least one token")
        ids, _ = encode(self.tokenizer, text)
        if not ids:
            raise InputError(f"text {text!r} encodes to no token")
        mx = self.spec.max_positions
        if mx is not None and len(ids) > mx:
            raise InputError(
                f"text has {len(ids)} tokens, more than the model's context of {mx}; "
                "shorten the prompt"
            )
        warnings: list[str] = []
        tid = self._encode_target(target, "target", warnings)
        did = (
            self._encode_target(distractor, "distractor", warnings)
            if distractor is not None
            else None
        )
        rs = [None if r is None else self._parse_root(r, len(ids)) for r in roots]
        tokens = [self.tokenizer.decode([i]) for i in ids]
        return Prepared(text, ids, tokens, target, tid, distractor, did, rs, warnings)

    # ------------------------------------------------------------------ API
    def trace(
        self,
        text: str,
        target: str,
        distractor: Optional[str] = None,
        preset: str = "kqv_aligned",
        root: Optional[str] = None,
        **overrides,
    ) -> TraceResult:
        """Trace one prompt; ``root="name@pos"`` reroots (seed 1.0 there, §3)."""
        return self.trace_batch(
            [{"text": text, "target": target, "distractor": distractor, "root": root}],
            preset=preset,
            **overrides,
        )[0]

    def trace_batch(
        self,
        prompts: list[dict],
        preset: str = "kqv_aligned",
        batch_size: int = 16,
        on_error: str = "raise",
        **overrides,
    ) -> list:
        """Trace many prompts (dicts with text, target, optional distractor and root).

        Returns one result per dict, in order. Dicts with the same text, target and
        distractor share one forward pass. With ``on_error="collect"`` a bad prompt
        yields a :class:`TraceFailure` in its place instead of raising."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size {batch_size!r}: give 1 or more prompts per batch")
        cfg = make_config(preset, **overrides)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            if not isinstance(p, dict) or "text" not in p or "target" not in p:
                raise InputError(f"prompt #{i} must be a dict with at least 'text' and 'target'")
            key = (p["text"], p["target"], p.get("distractor"))
            groups.setdefault(key, []).append(i)
        out: list = [None] * len(prompts)
        ready: list[tuple[Prepared, list[int]]] = []
        for (text, target, distractor), idxs in groups.items():
            try:
                prep = self.prepare(
                    text, target, distractor, [prompts[i].get("root") for i in idxs]
                )
                ready.append((prep, idxs))
            except InputError as e:
                if on_error != "collect":
                    raise
                for i in idxs:
                    out[i] = TraceFailure(i, prompts[i], str(e))
        ready.sort(key=lambda x: len(x[0].ids))  # less padding
        for chunk in self._chunks(ready, batch_size):
            results = self._run([p for p, _ in chunk], cfg)
            for (_, idxs), res in zip(chunk, results):
                for i, r in zip(idxs, res):
                    why = non_finite(self, r, cfg)  # NaN or infinity: an error, never a result
                    if why is not None and on_error != "collect":
                        raise NonFiniteError(why)
                    out[i] = r if why is None else TraceFailure(i, prompts[i], why)
        return out

    def _chunks(self, ready: list, batch_size: int):
        """Consecutive batches of the length-sorted prompts, cut as
        :func:`unpack.cost.batch_sizes` says (the planner cuts the same way)."""
        i = 0
        for n in batch_sizes(shape_of(self.spec), [len(p.ids) for p, _ in ready], batch_size):
            yield ready[i : i + n]
            i += n

    # ------------------------------------------------------------------ engine
    def pad(self, preps: list[Prepared]) -> tuple[Tensor, Tensor]:
        """``(ids [B, S], lengths [B])``: the prompts' token ids right-padded with the
        tokenizer's pad token (a pad never changes an earlier position)."""
        ids = torch.full(
            (len(preps), max(len(p.ids) for p in preps)), self._pad_id, dtype=torch.long
        )
        for b, p in enumerate(preps):
            ids[b, : len(p.ids)] = torch.tensor(p.ids)
        return ids, torch.tensor([len(p.ids) for p in preps])

    def start(
        self, cap: Capture, tid: Tensor, did: Optional[Tensor], seed: str
    ) -> tuple[Tensor, Tensor]:
        """docs/METHOD.md §3 for a capture: ``(I [B, N], d̂_t [B, D])``, the seeds in
        mode ``seed`` and the centered target direction the depth-0 rules read
        (``did``: distractor ids, ``-1`` for none; None for no distractors)."""
        W_U, W_U_mean = self.spec.W_U, self.W_U_mean.to(cap.dtype)
        I = dec.seeds(cap, dec.writers_hat(cap), W_U, W_U_mean, tid, did, seed)
        u = dec.unembed_direction(W_U, W_U_mean, tid, did)
        return I, self.spec.ln_final.center(dec.target_direction(cap, u))

    def layer_ops(self, cap: Capture, cfg: Config, d_hat: Tensor):
        """``L -> (MLPOps, HeadOps)``: the §4-6 factors of layer ``L`` for
        :func:`unpack.flow.sweep`."""
        chat = dec.writers_hat(cap)

        def ops_for_layer(L):
            lw = cap.layers[L].weights()  # one cast of the layer for all its readers
            hops = dec.head_ops(cap, L, chat, d_hat, cfg, self.engine, lw)
            return (
                dec.mlp_ops(cap, L, chat, d_hat, cfg, lw),
                fused.attach(hops) if self.engine.fused else hops,
            )

        return ops_for_layer

    @torch.no_grad()
    def _run(self, preps: list[Prepared], cfg: Config) -> list[list[TraceResult]]:
        prof = Profile()
        with prof("total"):
            with prof("forward"):
                ids, lengths = self.pad(preps)
                cap = capture(self.spec, ids, lengths, dtype=self.dtype)
            tid = torch.tensor([p.target_id for p in preps], device=self.device)
            did = torch.tensor(
                [p.distractor_id if p.distractor_id is not None else -1 for p in preps],
                device=self.device,
            )
            I, d_hat = self.start(cap, tid, did, cfg.seed)
            F0 = initial_credit(
                I,
                [len(p.ids) - 1 for p in preps],
                [[None if r is None else r[1:] for r in p.roots] for p in preps],
                ids.shape[1],
            )
            mass = F0.abs().sum((2, 3))  # Σ|seeds| per (b, r)
            search = PathSearch(
                self.comps,
                F0,
                cfg.path_min_frac * mass,
                cfg.max_path_nodes,
                max_bytes=path_bytes(self.device),
            )
            with prof("sweep"):
                flow = sweep(
                    cap,
                    self.layer_ops(cap, cfg, d_hat),
                    F0,
                    cfg.edge_min_frac * mass if cfg.position_edges else None,
                    search=search,
                    profile=prof,
                )
            sw = Swept(
                cap,
                I,
                flow,
                search,
                flow.token_credit(self.comps.n_emb),
                search.terminal_credit(ids.shape[1]),
                flow.position_edges(),
                cap.logits_t.float().log_softmax(-1),
            )
            with prof("results"):
                results = [
                    [self._result(p, b, r, root, sw, cfg) for r, root in enumerate(p.roots)]
                    for b, p in enumerate(preps)
                ]
        timing = per_prompt(prof, len(preps))
        for per_root in results:
            for res in per_root:
                res.timing = dict(timing)
        return results

    def _edge_frames(self, b: int, r: int, sw: "Swept"):
        """``(edges, position_edges)`` of prompt ``b``, root ``r`` as DataFrames."""
        import pandas as pd

        names = self.comps.names
        Eb = sw.flow.E[b, r].double().cpu().numpy()
        pi, ci, mi = np.nonzero(Eb)
        edges = pd.DataFrame(
            {
                "parent": [names[i] for i in pi],
                "child": [names[i] for i in ci],
                "mode": [MODES[m] for m in mi],
                "weight": Eb[pi, ci, mi],
            }
        )
        if sw.pos_edges is None:
            return edges, None
        bb, rr, par, ppos, ch, cpos, mode, w = sw.pos_edges
        sel = ((bb == b) & (rr == r)).nonzero(as_tuple=True)[0]
        pe = pd.DataFrame(
            {
                "parent": [names[i] for i in par[sel].tolist()],
                "parent_pos": ppos[sel].tolist(),
                "child": [names[i] for i in ch[sel].tolist()],
                "child_pos": cpos[sel].tolist(),
                "mode": [MODES[m] for m in mode[sel].tolist()],
                "weight": w[sel].double().tolist(),
            }
        )
        return edges, pe

    def _result(self, p: Prepared, b: int, r: int, root, sw: "Swept", cfg: Config) -> TraceResult:
        names, n, cap = self.comps.names, len(p.ids), sw.cap
        cr = sw.credit[b, r, :n].double().cpu().numpy()
        pct, supp, pos_total = credit_summary(cr)
        edges, pe = self._edge_frames(b, r, sw)
        flows = sw.flow.total[b, r, :, :n].double().cpu().numpy()
        if root is None:
            seeds = dict(zip(names, sw.I[b].double().tolist()))
        else:
            seeds = {f"{names[root[1]]}@{root[2]}": 1.0}
        logit_diff = None
        if p.distractor_id is not None:
            logit_diff = float(cap.logits_t[b, p.target_id] - cap.logits_t[b, p.distractor_id])
        return TraceResult(
            text=p.text,
            target=p.target,
            distractor=p.distractor,
            root=None if root is None else root[0],
            target_id=p.target_id,
            distractor_id=p.distractor_id,
            tokens=p.tokens,
            token_ids=p.ids,
            target_pos=n - 1,
            token_credit=cr,
            token_credit_pct=pct,
            suppression=supp,
            seeds=seeds,
            component_flow={nm: flows[i] for i, nm in enumerate(names)},
            edges=edges,
            position_edges=pe,
            paths=sw.search.top_paths(b, r, cfg.top_paths_k, p.tokens, pos_total),
            paths_truncated=sw.search.truncated,
            target_prob=float(sw.logp[b, p.target_id].exp()),
            target_logit=float(cap.logits_t[b, p.target_id]),
            logit_diff=logit_diff,
            config=cfg.to_dict(),
            timing={},
            warnings=list(p.warnings) + truncation_notice(sw.search),
            path_credit=sw.path_credit[b, r, :n].double().cpu().numpy(),
        )


@dataclass
class Swept:
    """One batch after the sweep: what every (prompt, root) result is read from."""

    cap: Capture
    I: Tensor  # [B, N] seeds
    flow: Flow
    search: PathSearch
    credit: Tensor  # [B, R, S] token credit
    path_credit: Tensor  # [B, R, S] Σ of the complete paths found
    pos_edges: Optional[tuple]  # Flow.position_edges()
    logp: Tensor  # [B, V] log-probabilities at the target position
