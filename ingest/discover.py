"""Circuit discovery across the prompts of a stored run.

The procedure of the method's published release, on the store:

1. **Seeds.** Each head's direct effect on the metric at the target position
   (``ĉ_h[t] · d_t``, docs/METHOD.md §3 with ``seed="metric"``: the logit difference
   where there is a distractor) is computed with the project's own forward
   pass. In each prompt the ``seeds`` heads of largest ``|direct effect|`` are
   selected; a head is a seed when it is selected in at least ``min_share`` of
   the prompts (at most ``seeds`` of them, by mean ``|direct effect|``).
2. **Breadth-first reroots.** Every head of the frontier is rerooted (§3) where
   it acts — the seeds at the target position (role ``END``), later heads at the
   position where their parent reads them most, named by the prompt's role there
   (or its offset from the end) in most prompts. The rerooted traces that are
   not stored yet are traced and stored on the way (:func:`ingest.run.ingest`,
   into the same run). From each rerooted trace the direct interaction edges
   (§6, summed over positions) from the head to every upstream head give one
   strength per mode K, Q, V; in each prompt the ``per_mode`` strongest upstream
   heads of each mode (by ``|strength|``) are selected, and with ``relative`` also
   every other upstream head whose ``|strength|`` reaches ``relative`` times the
   mode's strongest in that prompt (heads that share a role, such as two
   previous-token heads feeding one induction head's K, are then both kept).
3. **Recurrence.** An edge (parent, child, mode) is kept when it is selected in
   at least ``min_share`` of the prompts; its weight is the mean strength over
   the prompts (0 where absent). Children of kept edges form the next frontier,
   to ``depth`` reroots; a head already in the circuit is not rerooted again.

The circuit (components, edges, parameters and the prompts it was found on) is
stored by :func:`ingest.circuits.save_circuit`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from unpack.components import layer_head
from unpack.errors import InputError

from .queries import NoData, pick_model_task, prompt_records, stored_prompts
from .reroots import load_tracer, store_reroots
from .store import open_read_only as open_db

MODES = ("K", "Q", "V")
DEFAULT_CONDITION = {"ioi": "ioi_io"}


@dataclass
class Circuit:
    circuit_id: int | None
    run_id: int
    model: str
    preset: str
    task: str
    condition: str | None
    params: dict
    prompt_ids: list[int]
    components: pd.DataFrame  # component, layer, head, depth, root, share, direct_effect
    edges: pd.DataFrame  # parent, child, mode, weight, share
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "circuit_id": self.circuit_id,
            "run_id": self.run_id,
            "model": self.model,
            "preset": self.preset,
            "task": self.task,
            "condition": self.condition,
            "params": self.params,
            "n_prompts": len(self.prompt_ids),
            "components": self.components["component"].tolist(),
            "component_rows": self.components.to_dict(orient="records"),
            "edges": self.edges[["parent", "child", "mode", "weight", "share"]].to_dict(
                orient="records"
            ),
        }

    def format(self) -> str:
        lines = [
            f"circuit {self.circuit_id}: {self.model}, task {self.task}"
            f"{' (' + self.condition + ')' if self.condition else ''}, preset {self.preset}, "
            f"{len(self.prompt_ids)} prompts, {len(self.components)} components, "
            f"{len(self.edges)} edges",
            "components (depth, share of prompts, rerooted at):",
        ]
        for c in self.components.itertuples():
            de = f", direct effect {c.direct_effect:+.3f}" if pd.notna(c.direct_effect) else ""
            lines.append(
                f"  {c.component:<18} depth {c.depth}  share {c.share:.2f}  @ {c.root}{de}"
            )
        lines.append("edges (parent <- child, mode, mean weight, share of prompts):")
        for e in self.edges.itertuples():
            lines.append(f"  {e.parent} <- {e.child}  {e.mode}  {e.weight:+.4f}  {e.share:.2f}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def head_name(L: int, h: int) -> str:
    return f"attn_{L}_head_{h}"


def split_head(name: str) -> tuple[int, int]:
    """``(layer, head)`` of a head's name."""
    L, h = layer_head(name)
    if h is None:
        raise ValueError(f"{name!r} is not an attention head")
    return L, h


def check_params(seeds, per_mode, depth, min_share, relative=None) -> None:
    for flag, v, lo in (("--seeds", seeds, 1), ("--per-mode", per_mode, 1), ("--depth", depth, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"{flag} {v!r} must be a whole number >= {lo}")
    if not isinstance(min_share, (int, float)) or not 0.0 < float(min_share) <= 1.0:
        raise InputError(f"--min-share {min_share!r} must be a share in (0, 1], e.g. 0.5")
    if relative is not None and (
        isinstance(relative, bool)
        or not isinstance(relative, (int, float))
        or not 0.0 < float(relative) <= 1.0
    ):
        raise InputError(
            f"--relative {relative!r} must be a fraction of the strongest in (0, 1], e.g. 0.5"
        )


# ------------------------------------------------------------------ the model side


def encode_batch(tracer, records) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids [B, S] right-padded, lengths, target ids, distractor ids or -1)``."""
    preps = [tracer.prepare(r.text, r.target, r.distractor or None) for r in records]
    ids, lengths = tracer.pad(preps)
    tid = torch.tensor([p.target_id for p in preps])
    did = torch.tensor([p.distractor_id if p.distractor_id is not None else -1 for p in preps])
    return ids, lengths, tid, did


def direct_effect_table(tracer, records, batch_size: int = 16) -> np.ndarray:
    """``[P, L, H]`` direct effects of every head on each prompt's metric."""
    from unpack.intervene import direct_effects

    out = []
    for k in range(0, len(records), batch_size):
        ids, lengths, tid, did = encode_batch(tracer, records[k : k + batch_size])
        out.append(
            direct_effects(tracer.spec, ids, lengths, tid, did, dtype=tracer.dtype)
            .double()
            .cpu()
            .numpy()
        )
    return np.concatenate(out)


def pick_seeds(de: np.ndarray, k: int, min_share: float) -> list[tuple[str, float, float]]:
    """``(head, share, mean direct effect)`` of the seeds (step 1 of the module doc)."""
    P, L, H = de.shape
    flat = np.abs(de.reshape(P, L * H))
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    share = np.bincount(top.ravel(), minlength=L * H) / P
    order = np.argsort(-flat.mean(0), kind="stable")
    mean = de.reshape(P, L * H).mean(0)
    kept = [i for i in order if share[i] >= min_share][:k]
    return [(head_name(*divmod(int(i), H)), float(share[i]), float(mean[i])) for i in kept]


# ------------------------------------------------------------------ the store side


def _prompts(con, db, model, task, preset, condition, n):
    """``(run_id, prompt ids, records, n_tokens)`` of the stored prompts the circuit is
    found on: the first ``n`` ok prompts of the first run with target traces."""
    stored = stored_prompts(con, model, task, preset, condition)
    stored = stored[stored["roots"].map(lambda r: "target" in r)]
    if stored.empty:
        raise NoData(
            f"database {db!s} has no {task} prompts for model {model!r} (preset "
            f"{preset}{', condition ' + condition if condition else ''})",
            f"unpack ingest --model {model} --task {task} --n 100 --db {db}",
        )
    run_id = int(stored["run_id"].min())
    ids = [int(i) for i in stored[stored["run_id"] == run_id]["prompt_id"]]
    ok = {
        r[0]: r[1]
        for r in con.execute(
            f"SELECT prompt_id, n_tokens FROM prompts WHERE status = 'ok' AND prompt_id IN "
            f"({', '.join('?' for _ in ids)})",
            ids,
        ).fetchall()
    }
    ids = [i for i in ids if i in ok][:n] if n else [i for i in ids if i in ok]
    return run_id, ids, prompt_records(con, ids), [int(ok[i]) for i in ids]


def _roots_of(con, prompt_ids) -> dict[int, set]:
    rows = con.execute(
        f"SELECT prompt_id, root FROM traces WHERE prompt_id IN "
        f"({', '.join('?' for _ in prompt_ids)})",
        list(prompt_ids),
    ).fetchall()
    out: dict[int, set] = {}
    for pid, root in rows:
        out.setdefault(int(pid), set()).add(root)
    return out


def ensure_reroots(db, model, preset, run_id, prompt_ids, records, specs, tracer, progress):
    """Trace and store the rerooted traces ``specs`` that the prompts lack (into the
    same run, with its config). Returns how many prompts were traced."""
    con = open_db(db)
    try:
        have = _roots_of(con, prompt_ids)
        config = json.loads(
            con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
        )
    finally:
        con.close()
    todo = [r for pid, r in zip(prompt_ids, records) if not set(specs) <= have.get(pid, set())]
    if todo:
        command = f"unpack ingest --model {model} --roots {' '.join(sorted(specs))} --db {db}"
        store_reroots(todo, db, model, preset, config, sorted(specs), tracer, progress, command)
    return len(todo)


def reroot_edges(con, prompt_ids, specs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Direct edges from each rerooted head to upstream heads: ``(strengths, positions)``.
    strengths: prompt_id, root, child, mode, w (summed over positions); positions:
    prompt_id, root, child, child_pos, a (Σ|weight| over modes)."""
    q = (
        f"FROM traces t JOIN edges e ON e.trace_id = t.trace_id AND e.parent = t.root_component "
        f"WHERE t.prompt_id IN ({', '.join('?' for _ in prompt_ids)}) "
        f"AND t.root IN ({', '.join('?' for _ in specs)}) "
        "AND e.child_head IS NOT NULL AND e.mode IN ('K', 'Q', 'V')"
    )
    params = [int(i) for i in prompt_ids] + list(specs)
    w = con.execute(
        f"SELECT t.prompt_id, t.root, e.child, e.mode, sum(e.weight) AS w {q} GROUP BY ALL", params
    ).df()
    pos = con.execute(
        f"SELECT t.prompt_id, t.root, e.child, e.child_pos, "
        f"sum(abs(e.weight)) AS a {q} GROUP BY ALL",
        params,
    ).df()
    return w, pos


def select_edges(
    w: pd.DataFrame,
    spec: str,
    prompt_ids,
    per_mode: int,
    min_share: float,
    relative: float | None = None,
) -> pd.DataFrame:
    """child, mode, weight (mean over the prompts), share (of prompts where the child is
    selected: among the ``per_mode`` strongest of that mode, or with ``|strength|`` at
    least ``relative`` times the mode's strongest) for the reroot ``spec``; kept rows only."""
    sub = w[w["root"] == spec].copy()
    if sub.empty:
        return pd.DataFrame(columns=["child", "mode", "weight", "share"])
    sub["a"] = sub["w"].abs()
    sub = sub[sub["a"] > 0].sort_values(
        ["prompt_id", "mode", "a", "child"], ascending=[True, True, False, True]
    )
    g = sub.groupby(["prompt_id", "mode"], sort=False)
    picked = g.cumcount() < per_mode
    if relative is not None:
        picked |= sub["a"] >= relative * g["a"].transform("max")
    top = sub[picked]
    P = len(prompt_ids)
    share = top.groupby(["child", "mode"]).size() / P
    weight = sub.groupby(["child", "mode"])["w"].sum() / P
    out = pd.DataFrame({"share": share}).join(weight.rename("weight")).reset_index()
    out = out[out["share"] >= min_share]
    return out.sort_values(["share", "weight"], ascending=False, key=None)[
        ["child", "mode", "weight", "share"]
    ]


def where_label(pos: pd.DataFrame, spec: str, child: str, roles: dict, n_tokens: dict) -> str:
    """Where to reroot ``child``: the role (or offset from the end) of the position
    where ``spec`` reads it most, the most common over the prompts."""
    sub = pos[(pos["root"] == spec) & (pos["child"] == child)]
    labels = []
    for pid, g in sub.groupby("prompt_id"):
        p = int(g.loc[g["a"].idxmax(), "child_pos"])
        named = sorted(r for r, v in roles.get(pid, {}).items() if int(v) == p)
        labels.append("END" if "END" in named else named[0] if named else str(p - n_tokens[pid]))
    return Counter(labels).most_common(1)[0][0] if labels else "END"


# ------------------------------------------------------------------ discovery


def discover(
    db,
    *,
    model=None,
    task=None,
    condition=None,
    preset: str = "kqv_aligned",
    seeds: int = 3,
    per_mode: int = 1,
    depth: int = 2,
    min_share: float = 0.5,
    relative: float | None = None,
    n: int | None = None,
    tracer=None,
    progress: bool = False,
    store: bool = True,
) -> Circuit:
    """Find the circuit of a stored run (see the module docstring) and store it."""
    check_params(seeds, per_mode, depth, min_share, relative)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"--n {n!r} must be a positive whole number")
    con = open_db(db)
    try:
        model, task, _ = pick_model_task(con, db, model, task, preset)
        condition = condition if condition is not None else DEFAULT_CONDITION.get(task)
        run_id, pids, records, n_tok = _prompts(con, db, model, task, preset, condition, n)
    finally:
        con.close()
    tracer = tracer or load_tracer(model, "discover needs it for the direct effects and reroots")
    de = direct_effect_table(tracer, records)
    seed_rows = pick_seeds(de, seeds, min_share)
    if not seed_rows:
        raise InputError(
            f"no head is among the {seeds} largest direct effects in at least "
            f"{min_share:.0%} of the {len(pids)} prompts; lower --min-share or raise "
            "--seeds"
        )
    mean_de = {
        head_name(L, h): float(de[:, L, h].mean())
        for L in range(de.shape[1])
        for h in range(de.shape[2])
    }
    where0 = "END" if all("END" in (r.roles or {}) for r in records) else "-1"
    comps = [dict(component=h, depth=0, root=f"{h}@{where0}", share=s) for h, s, _ in seed_rows]
    edges, frontier = [], list(comps)
    roles = {pid: dict(r.roles or {}) for pid, r in zip(pids, records)}
    ntok = dict(zip(pids, n_tok))
    for d in range(depth):
        # a layer-0 head reads only embeddings: nothing upstream to reroot for
        specs = sorted({c["root"] for c in frontier if split_head(c["component"])[0] > 0})
        if not specs:
            break
        ensure_reroots(db, model, preset, run_id, pids, records, specs, tracer, progress)
        con = open_db(db)
        try:
            w, pos = reroot_edges(con, pids, specs)
        finally:
            con.close()
        frontier = _expand(
            frontier,
            w,
            pos,
            pids,
            (per_mode, min_share, relative),
            d + 1,
            comps,
            edges,
            roles,
            ntok,
        )
    for c in comps:
        c["direct_effect"] = mean_de[c["component"]]
        c["layer"], c["head"] = split_head(c["component"])
    params = dict(
        seeds=seeds,
        per_mode=per_mode,
        depth=depth,
        min_share=float(min_share),
        relative=None if relative is None else float(relative),
        n=n,
        metric="logit difference (target - distractor; target - mean logit without a distractor)",
        seed_rule="direct effect, seed='metric'",
    )
    circuit = Circuit(
        None,
        run_id,
        model,
        preset,
        task,
        condition,
        params,
        pids,
        pd.DataFrame(comps)[
            ["component", "layer", "head", "depth", "root", "share", "direct_effect"]
        ],
        pd.DataFrame(edges, columns=["parent", "child", "mode", "weight", "share"]),
    )
    if store:
        from .circuits import save_circuit

        circuit.circuit_id = save_circuit(db, circuit)
    return circuit


def _expand(frontier, w, pos, pids, rule, depth, comps, edges, roles, ntok):
    """Select each frontier head's recurring upstream edges (``rule``: per_mode,
    min_share, relative of :func:`select_edges`); add new heads to ``comps`` and
    return them (the next frontier)."""
    known = {c["component"] for c in comps}
    nxt = []
    for f in frontier:
        sel = select_edges(w, f["root"], pids, *rule)
        for e in sel.itertuples():
            edges.append(
                dict(
                    parent=f["component"],
                    child=e.child,
                    mode=e.mode,
                    weight=float(e.weight),
                    share=float(e.share),
                )
            )
            if e.child in known:
                continue
            known.add(e.child)
            where = where_label(pos, f["root"], e.child, roles, ntok)
            c = dict(
                component=e.child,
                depth=depth,
                root=f"{e.child}@{where}",
                share=float(sel[sel["child"] == e.child]["share"].max()),
            )
            comps.append(c)
            nxt.append(c)
    return nxt
