"""A baseline as a tracer: the same ``trace_batch`` and :class:`TraceResult` as
Unpack's :class:`unpack.Tracer`, so the ingest stores a baseline's scores in the
same tables (token credits; edges summed over positions; the logits edges as
each writer's flow at the target position). No paths, no seeds.

Parameters per method (stored in ``runs.method_params``):
``eap`` none; ``eap_ig`` ``steps``; ``ig`` ``steps`` and ``baseline`` (zero, pad,
mean); ``grad_x_input`` none; ``rollout`` none. ``eap`` and ``eap_ig`` need each
prompt's corrupted prompt (``corrupt``), of the same number of tokens.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..tracer import TraceFailure, TraceResult, Tracer
from ..tokens import encode
from . import forward as F
from . import methods as M
from .graph import LOGITS, edges, flatten

DEFAULTS = {
    "eap": {},
    "eap_ig": {"steps": 16},
    "ig": {"steps": 32, "baseline": "zero"},
    "grad_x_input": {},
    "rollout": {},
}


def method_params(method: str, params: dict | None = None) -> dict:
    """The method's parameters: its defaults updated by ``params``, checked."""
    if method not in DEFAULTS:
        raise InputError(f"--method {method!r}: choose one of {', '.join(M.METHODS)}")
    out = dict(DEFAULTS[method])
    for k, v in (params or {}).items():
        if v is None:
            continue
        if k not in out:
            raise InputError(
                f"--method {method} takes no parameter {k!r} (it takes: {', '.join(out) or 'none'})"
            )
        out[k] = v
    if "steps" in out and (
        isinstance(out["steps"], bool) or not isinstance(out["steps"], int) or out["steps"] < 1
    ):
        raise InputError(f"--steps {out['steps']!r} must be a positive integer, e.g. --steps 16")
    if out.get("baseline", "zero") not in M.IG_BASELINES:
        raise InputError(
            f"--ig-baseline {out['baseline']!r}: choose one of {', '.join(M.IG_BASELINES)}"
        )
    return out


def method_config(method: str, params: dict | None = None) -> dict:
    """A baseline run's config (what ``runs.config`` holds and its hash keys the run)."""
    return {"preset": method, "method": method, **method_params(method, params)}


class BaselineTracer(Tracer):
    """``BaselineTracer(method, model=..., tokenizer=..., **params)``: one baseline."""

    def __init__(self, method: str, *, model, tokenizer, dtype=None, device=None, **params):
        super().__init__(model=model, tokenizer=tokenizer, dtype=dtype, device=device)
        cfg = getattr(model, "config", None)  # refused before any prompt is traced
        F.check_supported(
            self.spec, getattr(cfg, "name_or_path", "") or getattr(cfg, "model_type", "")
        )
        self.method = method
        self.params = method_params(method, params)

    def trace_batch(
        self,
        prompts: list[dict],
        preset: str = "",
        batch_size: int = 16,
        on_error: str = "raise",
        **_config,
    ) -> list:
        """One result per prompt dict (``text``, ``target``, ``distractor``, and
        ``corrupt`` for eap/eap_ig); a bad prompt raises or, with
        ``on_error="collect"``, yields a :class:`TraceFailure`."""
        out, ready = [None] * len(prompts), []
        for i, p in enumerate(prompts):
            try:
                ready.append((i, *self._prepare(p)))
            except InputError as e:
                if on_error != "collect":
                    raise
                out[i] = TraceFailure(i, p, str(e))
        for k in range(0, len(ready), batch_size):
            chunk = ready[k : k + batch_size]
            t0 = time.perf_counter()
            results = self._run_chunk([c[1] for c in chunk], [c[2] for c in chunk])
            dt = (time.perf_counter() - t0) / len(chunk)
            for (i, *_), r in zip(chunk, results):
                r.timing = {"total_s": dt}
                bad = not (
                    np.isfinite(r.token_credit).all() and r.edges["weight"].map(np.isfinite).all()
                )
                if bad and on_error != "collect":
                    raise InputError(f"prompt {prompts[i]['text']!r}: non-finite scores")
                out[i] = TraceFailure(i, prompts[i], "non-finite scores") if bad else r
        return out

    def _prepare(self, p: dict):
        if p.get("root"):
            raise InputError(f"{self.method} traces from the target only; drop --roots")
        prep = self.prepare(p["text"], p["target"], p.get("distractor"))
        corrupt = None
        if self.method in M.EDGE_METHODS:
            if not p.get("corrupt"):
                raise InputError(
                    f"{self.method} needs a corrupted prompt for {p['text']!r}: "
                    "IOI gives its ABC control; a corpus needs a 'corrupt' column"
                )
            corrupt = encode(self.tokenizer, p["corrupt"])[0]
            if len(corrupt) != len(prep.ids):
                raise InputError(
                    f"corrupted prompt {p['corrupt']!r} has {len(corrupt)} tokens, "
                    f"the prompt {len(prep.ids)}: patching needs equal lengths"
                )
        return prep, corrupt

    def _run_chunk(self, preps, corrupts) -> list[TraceResult]:
        ids, lengths = self.pad(preps)
        tid = torch.tensor([p.target_id for p in preps])
        did = torch.tensor([-1 if p.distractor_id is None else p.distractor_id for p in preps])
        kind, steps = self.method, self.params.get("steps", 0)
        edge_w = None
        if kind in M.EDGE_METHODS:
            cids = ids.clone()
            for b, c in enumerate(corrupts):
                cids[b, : len(c)] = torch.tensor(c)
            s = M.eap(
                self.spec,
                ids,
                cids,
                lengths,
                tid,
                did,
                self.dtype,
                steps if kind == "eap_ig" else 0,
            )
            credit, logits = s.tokens, s.logits_t
            edge_w = flatten(s.attn, s.mlp, s.logits).cpu().numpy()
        elif kind == "ig":
            credit = M.integrated_gradients(
                self.spec,
                ids,
                lengths,
                tid,
                did,
                self.params["baseline"],
                steps,
                self._pad_id,
                self.dtype,
            )[0]
        elif kind == "grad_x_input":
            credit = M.grad_x_input(self.spec, ids, lengths, tid, did, self.dtype)[0]
        else:
            credit = M.rollout(self.spec, ids, lengths, self.dtype)
        if kind not in M.EDGE_METHODS:
            from ..intervene import forward

            logits = forward(self.spec, ids, lengths, self.dtype)
        credit = credit.detach().cpu().double().numpy()
        return [
            self._result(
                p,
                credit[b, : len(p.ids)],
                logits[b].detach(),
                tid[b],
                did[b],
                None if edge_w is None else edge_w[b],
            )
            for b, p in enumerate(preps)
        ]

    def _result(self, p, credit: np.ndarray, logits, tid, did, w) -> TraceResult:
        pos = credit.clip(min=0).sum()
        pct = 100 * credit / pos if pos > 0 else np.zeros_like(credit)
        neg = -credit.clip(max=0).sum()
        ld = float(logits[tid] - (logits[did] if did >= 0 else logits.mean()))
        e = pd.DataFrame({"parent": [], "child": [], "mode": [], "weight": []})
        comp_flow = {}
        if w is not None:
            parent, child, mode = edges(self.spec)
            t = len(p.ids) - 1
            at_logits = parent == LOGITS
            for c, v in zip(child[at_logits], w[at_logits]):
                comp_flow[c] = np.zeros(len(p.ids))
                comp_flow[c][t] = v
            nz = (w != 0) & ~at_logits
            e = pd.DataFrame(
                {
                    "parent": parent[nz],
                    "child": child[nz],
                    "mode": mode[nz],
                    "weight": w[nz].astype(np.float64),
                }
            )
        return TraceResult(
            text=p.text,
            target=p.target,
            distractor=p.distractor,
            root=None,
            target_id=p.target_id,
            distractor_id=p.distractor_id,
            tokens=p.tokens,
            token_ids=p.ids,
            target_pos=len(p.ids) - 1,
            token_credit=credit,
            token_credit_pct=pct,
            suppression=float(neg / (pos + neg)) if pos + neg > 0 else 0.0,
            seeds={},
            component_flow=comp_flow,
            edges=e,
            position_edges=None,
            paths=[],
            paths_truncated=False,
            target_prob=float(logits.double().softmax(-1)[tid]),
            target_logit=float(logits[tid]),
            logit_diff=ld,
            config={"method": self.method, **self.params},
            timing={},
            warnings=list(p.warnings),
        )
