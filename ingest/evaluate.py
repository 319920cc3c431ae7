"""``unpack evaluate``: the field's metrics for every method's stored run of one
model and task, side by side (docs/RESULTS_BASELINES.md).

Circuits (runs with edges: unpack, eap, eap_ig). A method's edge score is its
stored weight summed over positions, averaged over the prompts (0 where a
prompt has no row); the logits edges are the writers' flows at the target
position. The baselines store every edge summed over positions; so does an
Unpack run ingested with ``--set position_edges=false``, the like-for-like
comparison. Unpack's default store keeps position-resolved edges above
``edge_min_frac`` only, which leaves most edges tied at 0: each result says how
many edges its method scores (``edges_scored``) and how they were stored. At each budget (a share of
all edges of the graph, :mod:`unpack.baselines.graph`) the circuit is the edges
of largest ``|score|``. Every other edge is mean-ablated: its reader sees, in
place of the writer's output, the mean of that writer's output over the
corrupted prompts of the same length (as the MIB circuit track does). The
faithfulness of circuit ``C`` is ``(m(C) − m(∅)) / (m(N) − m(∅))`` with ``m``
the mean logit difference over the prompts, ``N`` the full model and ``∅``
every edge ablated. CPR is the area under faithfulness against the budget,
CMD the area between the curve and 1 (``|1 − f|``), both by the trapezoid rule
over the budgets and divided by their span, so a perfect method has CPR 1 and
CMD 0.

Tokens (every run). ERASER-style AOPC over the deletion fractions: the top
``k`` tokens by credit (``k = ⌈f·n⌉`` of the ``n`` positions between the first
and the last; those two always stay) are removed from the prompt
(comprehensiveness: ``m(x) − m(x \\ top k)``, higher is better) or are all that
is kept (sufficiency: ``m(x) − m(top k)``, lower is better); each averaged over
the fractions and the prompts.

Intervals: 95% percentile bootstrap over the prompts (the rankings fixed).
"""

from __future__ import annotations

import json
import math

BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)
N_BOOT = 1000


def register(subparsers) -> None:
    from unpack.flags import add_command, add_flags

    p = add_command(
        subparsers,
        "evaluate",
        "CPR/CMD of circuits and token AOPC, every method side by side",
        __doc__.split("\n\n", 1)[1],
        raw=True,
    )
    add_flags(p, "db")
    p.add_argument(
        "--model",
        required=True,
        help="the model, as stored by `unpack ingest` (and loadable: the metrics run it)",
    )
    p.add_argument("--task", required=True, help="the task of the prompts (ioi, induction, ...)")
    p.add_argument("--n", type=int, default=None, help="at most this many prompts (default all)")
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="faithfulness against budget, one line per method (default: <db>.faithfulness.png)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per method")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=evaluate_handler)


def evaluate_handler(args) -> int:
    res = evaluate(
        args.db,
        args.model,
        args.task,
        n=args.n,
        seed=args.seed,
        plot=args.plot or f"{args.db}.faithfulness.png",
    )
    if args.json:
        print(json.dumps(res, indent=1, default=float))
    else:
        print(format_results(res))
    return 0


# ------------------------------------------------------------------ the store


def load_runs(db, model: str, task: str, n: int | None = None):
    """``(runs, prompts, credits, edges)`` DataFrames of ``model``'s runs on ``task``:
    the prompts every run holds (ok), their token credits and summed edges."""
    import pandas as pd
    import sqlalchemy as sa

    from unpack.errors import InputError

    from . import store

    engine = store.connect(db, read_only=True)
    q = lambda sql, **kw: pd.read_sql(sa.text(sql), conn, params=kw)  # noqa: E731
    try:
        with engine.connect() as conn:
            runs = q(
                "SELECT r.run_id, coalesce(r.method, 'unpack') AS method, r.preset, "
                "r.method_params, r.config FROM runs r JOIN models m USING (model_id) "
                "WHERE m.name = :m ORDER BY r.run_id",
                m=model,
            )
            if runs.empty:
                raise InputError(
                    f"database {str(db)!r} has no run of model {model!r}; "
                    "ingest one with `unpack ingest --model ... --method ...`"
                )
            prompts = q(
                "SELECT p.run_id, p.prompt_id, p.prompt_key, p.text, p.target_id, "
                "p.distractor_id, p.metadata, p.trace_s, t.trace_id, t.root_pos "
                "FROM prompts p JOIN traces t USING (prompt_id) JOIN runs r USING "
                "(run_id) JOIN models m USING (model_id) WHERE m.name = :m AND "
                "p.task = :t AND p.status = 'ok' AND t.root = 'target'",
                m=model,
                t=task,
            )
            keys = (
                set.intersection(*[set(g.prompt_key) for _, g in prompts.groupby("run_id")])
                if len(prompts)
                else set()
            )
            if not keys:
                raise InputError(
                    f"no {task!r} prompt of {model!r} is stored by every run; "
                    "ingest the same prompts with each --method"
                )
            keys = sorted(keys)[:n] if n else sorted(keys)
            runs = runs[runs.run_id.isin(prompts.run_id)]  # runs with prompts of this task
            prompts = prompts[prompts.prompt_key.isin(keys)]
            ids = ",".join(str(int(t)) for t in prompts.trace_id)
            credits = q(
                f"SELECT trace_id, pos, credit FROM token_credits WHERE trace_id IN ({ids})"
            )
            edges = q(
                "SELECT trace_id, parent, child, mode, sum(weight) AS weight FROM edges "
                f"WHERE trace_id IN ({ids}) GROUP BY ALL"
            )
            flows = q(
                "SELECT f.trace_id, 'logits' AS parent, f.component AS child, "
                "'LOGITS' AS mode, f.flow AS weight FROM component_flows f JOIN traces t "
                f"USING (trace_id) WHERE f.trace_id IN ({ids}) AND f.pos = t.root_pos"
            )
    finally:
        engine.dispose()
    return runs, prompts, credits, pd.concat([edges, flows], ignore_index=True)


def scores_by_method(spec, runs, prompts, edges) -> dict:
    """``method -> [E]`` mean edge score over the prompts, in graph order, for the
    runs that have edges."""
    import numpy as np

    from unpack.baselines.graph import edges as graph_edges

    parent, child, mode = graph_edges(spec)
    index = {k: i for i, k in enumerate(zip(parent, child, mode))}
    out = {}
    for r in runs.itertuples():
        tids = set(prompts.trace_id[prompts.run_id == r.run_id])
        e = edges[edges.trace_id.isin(tids)]
        if e.empty:
            continue
        s = np.zeros(len(parent))
        idx = np.array([index.get(k, -1) for k in zip(e.parent, e.child, e["mode"])])
        np.add.at(s, idx[idx >= 0], e.weight.to_numpy()[idx >= 0])
        out[r.method] = s / len(tids)
    return out


# ------------------------------------------------------------------ the model


def prompt_items(tok, prompts) -> list[dict]:
    """One item per prompt key: token ids, corrupted ids, target and distractor ids,
    and the trace of each run (``trace``: run_id -> trace_id)."""
    import torch

    from unpack.errors import InputError
    from unpack.tokens import encode

    items = []
    for key, g in prompts.groupby("prompt_key", sort=True):
        metas = [json.loads(m) for m in g.metadata if m]
        corrupt = next((m["corrupt"] for m in metas if m.get("corrupt")), None)
        r = g.iloc[0]
        ids = encode(tok, r.text)[0]
        if corrupt is None or len(encode(tok, corrupt)[0]) != len(ids):
            raise InputError(
                f"prompt {r.text!r} has no corrupted prompt of its length stored; "
                "ingest the prompts with --method eap (it stores each one's "
                "corrupted prompt) before evaluating"
            )
        did = -1 if r.distractor_id is None or math.isnan(r.distractor_id) else int(r.distractor_id)
        items.append(
            dict(
                key=key,
                ids=torch.tensor(ids),
                corrupt=torch.tensor(encode(tok, corrupt)[0]),
                tid=int(r.target_id),
                did=did,
                trace=dict(zip(g.run_id.astype(int), g.trace_id.astype(int))),
            )
        )
    return items


def _padded(rows, S: int, fill=0):
    """Right-pad 1-D id tensors to ``S``: ``(ids [B, S], lengths [B])``."""
    import torch

    ids = torch.full((len(rows), S), fill, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
    return ids, torch.tensor([len(r) for r in rows])


def mean_refs(spec, items, dtype) -> list:
    """Per item ``[N, S_i, D]``: every writer's output averaged over the corrupted
    prompts of the item's length (a mean ablation needs aligned positions)."""
    import torch

    from unpack.baselines.forward import embed, run

    groups: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(len(it["ids"]), []).append(i)
    refs = [None] * len(items)
    for S, idx in groups.items():
        corr, lengths = _padded([items[i]["corrupt"] for i in idx], S)
        tid = torch.tensor([items[i]["tid"] for i in idx])
        did = torch.tensor([items[i]["did"] for i in idx])
        with torch.no_grad():
            w = run(spec, embed(spec, corr, dtype), lengths, tid, did, keep=True).writers.mean(0)
        for i in idx:
            refs[i] = w
    return refs


def circuit_metrics(spec, items, scores: dict, dtype, batch: int = 16) -> dict:
    """``{"clean": [P], "empty": [P], method: [n_budgets, P]}``: the metric per prompt
    of the full model, of every edge mean-ablated, and of each method's circuit at
    each budget (module docstring)."""
    import numpy as np
    import torch

    from unpack.baselines.forward import embed, run
    from unpack.baselines.graph import drop_outside

    E = len(next(iter(scores.values()))) if scores else 0
    P = len(items)
    out = {"clean": np.zeros(P), "empty": np.zeros(P)}
    out.update({m: np.zeros((len(BUDGETS), P)) for m in scores})
    drops = {m: [drop_outside(spec, _top(s, b), dtype) for b in BUDGETS] for m, s in scores.items()}
    empty = drop_outside(spec, np.zeros(E, bool), dtype)
    refs = mean_refs(spec, items, dtype)
    order = sorted(range(P), key=lambda i: len(items[i]["ids"]))
    with torch.no_grad():
        for k in range(0, P, batch):
            idx = order[k : k + batch]
            S = max(len(items[i]["ids"]) for i in idx)
            ids, lengths = _padded([items[i]["ids"] for i in idx], S)
            tid = torch.tensor([items[i]["tid"] for i in idx])
            did = torch.tensor([items[i]["did"] for i in idx])
            ref = torch.zeros(len(idx), *refs[idx[0]].shape[:1], S, spec.d_model, dtype=dtype)
            for b, i in enumerate(idx):
                ref[b, :, : refs[i].shape[1]] = refs[i]
            e = embed(spec, ids, dtype)
            f = lambda d: (
                run(
                    spec,
                    e,
                    lengths,
                    tid,
                    did,
                    drop=d,  # noqa: E731
                    ref=ref,
                )
                .metric.cpu()
                .double()
                .numpy()
            )
            out["clean"][idx] = run(spec, e, lengths, tid, did).metric.cpu().double().numpy()
            out["empty"][idx] = f(empty)
            for m, ds in drops.items():
                for j, d in enumerate(ds):
                    out[m][j, idx] = f(d)
    return out


def _top(score, budget: float):
    """Boolean ``[E]``: the ``max(1, round(budget·E))`` edges of largest ``|score|``
    (ties: graph order)."""
    import numpy as np

    k = max(1, int(round(budget * len(score))))
    keep = np.zeros(len(score), bool)
    keep[np.argsort(-np.abs(score), kind="stable")[:k]] = True
    return keep


def agreement(a, b, budgets=(0.01, 0.05, 0.1)) -> dict:
    """How two methods' edge rankings agree: Spearman's rank correlation of
    ``|score|`` over all edges, and the overlap (Jaccard) of their circuits at
    ``budgets``."""
    import numpy as np

    from unpack.baselines.agreement import spearman

    out = {"spearman": spearman(np.abs(a), np.abs(b))}
    for x in budgets:
        ka, kb = _top(a, x), _top(b, x)
        out[f"overlap_{100 * x:g}%"] = float((ka & kb).sum() / (ka | kb).sum())
    return out


def faithfulness(m, clean, empty):
    """Per budget: ``(mean m(C) − mean m(∅)) / (mean m(N) − mean m(∅))`` of ``m [K, P]``."""
    return (m.mean(1) - empty.mean()) / (clean.mean() - empty.mean())


def area(f) -> tuple[float, float]:
    """``(CPR, CMD)`` of a faithfulness curve over :data:`BUDGETS` (module docstring)."""
    import numpy as np

    x = np.asarray(BUDGETS)
    span = x[-1] - x[0]
    return (float(np.trapezoid(f, x) / span), float(np.trapezoid(np.abs(1 - f), x) / span))


def token_metrics(spec, items, credit: dict, pad_id: int, dtype, batch: int = 32) -> dict:
    """``method -> (comprehensiveness [P], sufficiency [P])`` per prompt, each
    averaged over :data:`FRACTIONS` (module docstring); ``credit[method][i]`` is
    item ``i``'s credit per position."""
    import numpy as np
    import torch

    from unpack.intervene import forward, logit_diff

    seqs, owner = [], []  # (method, item, kind) of every variant
    for m, cs in credit.items():
        for i, (it, c) in enumerate(zip(items, cs)):
            t = len(it["ids"]) - 1
            cand = np.arange(1, t)
            order = cand[np.argsort(-c[1:t], kind="stable")]
            for f in FRACTIONS:
                top = set(order[: max(1, math.ceil(f * len(cand)))].tolist())
                rest = [p for p in range(t + 1) if p not in top]
                only = [p for p in range(t + 1) if p in top or p in (0, t)]
                for kind, keep in (("comp", rest), ("suff", only)):
                    seqs.append(it["ids"][keep])
                    owner.append((m, i, kind))
    full = {i: None for i in range(len(items))}
    for i, it in enumerate(items):
        seqs.append(it["ids"])
        owner.append((None, i, "full"))
    vals = np.zeros(len(seqs))
    with torch.no_grad():
        for k in range(0, len(seqs), batch):
            chunk = seqs[k : k + batch]
            lengths = torch.tensor([len(s) for s in chunk])
            ids = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long)
            for b, s in enumerate(chunk):
                ids[b, : len(s)] = s
            own = owner[k : k + batch]
            tid = torch.tensor([items[i]["tid"] for _, i, _ in own])
            did = torch.tensor([items[i]["did"] for _, i, _ in own])
            vals[k : k + len(chunk)] = (
                logit_diff(forward(spec, ids, lengths, dtype), tid, did).double().numpy()
            )
    for (m, i, kind), v in zip(owner, vals):
        if kind == "full":
            full[i] = v
    out = {m: (np.zeros(len(items)), np.zeros(len(items))) for m in credit}
    for (m, i, kind), v in zip(owner, vals):
        if kind != "full":
            out[m][0 if kind == "comp" else 1][i] += (full[i] - v) / len(FRACTIONS)
    return out


def bootstrap(stat, P: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of ``stat(idx)`` over resamples of the ``P`` prompts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, P, P)) for _ in range(N_BOOT)]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


# ------------------------------------------------------------------ putting it together


def evaluate(
    db,
    model: str,
    task: str,
    n: int | None = None,
    seed: int = 0,
    plot: str | None = None,
    loaded=None,
) -> list[dict]:
    """One result per method (see the module docstring); ``loaded``: an already
    loaded ``(model, tokenizer)`` of ``model``."""
    import torch

    from unpack.adapters import build_spec
    from unpack.loading import load_model

    runs, prompts, credits, edges = load_runs(db, model, task, n)
    hf, tok = loaded or load_model(model)
    spec = build_spec(hf)
    dtype = torch.float64 if spec.W_E.dtype == torch.float64 else torch.float32
    items = prompt_items(tok, prompts)
    runs = runs.assign(label=_labels(runs))
    keys = [it["key"] for it in items]
    prompts = prompts[prompts.prompt_key.isin(keys)]
    scores = {
        r.label: s
        for r, s in zip(runs.itertuples(), _scores(spec, runs, prompts, edges))
        if s is not None
    }
    cm = circuit_metrics(spec, items, scores, dtype)
    cred = {r.label: _credits(items, credits, r.run_id) for r in runs.itertuples()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tm = token_metrics(spec, items, cred, pad, dtype)
    truth = _truth(model)
    out = []
    for r in runs.itertuples():
        res = dict(
            method=r.method,
            label=r.label,
            run_id=int(r.run_id),
            params=json.loads(r.method_params)
            if isinstance(r.method_params, str)
            else {"preset": r.preset},
            n_prompts=len(items),
            seconds_per_prompt=float(prompts.trace_s[prompts.run_id == r.run_id].mean()),
        )
        if r.label in scores:
            res.update(_circuit_result(cm, r.label, seed), **_coverage(scores[r.label], r.config))
            if "unpack" in scores and r.label != "unpack":
                res["vs_unpack"] = agreement(scores[r.label], scores["unpack"])
            if truth:
                res["ground_truth"] = _precision_recall(spec, scores[r.label], truth)
        comp, suff = tm[r.label]
        res.update(
            comprehensiveness=float(comp.mean()),
            sufficiency=float(suff.mean()),
            comprehensiveness_ci=bootstrap(lambda i: comp[i].mean(), len(items), seed),
            sufficiency_ci=bootstrap(lambda i: suff[i].mean(), len(items), seed),
        )
        out.append(res)
    if plot:
        plot_faithfulness(out, plot, f"{model} · {task} · {len(items)} prompts")
        for r in out:
            r["plot"] = plot
    return out


def _labels(runs) -> list[str]:
    """The method's name, or ``method:preset`` where a method has several runs."""
    dup = runs.method.duplicated(keep=False)
    return [f"{m}:{p}" if d else m for m, p, d in zip(runs.method, runs.preset, dup)]


def _scores(spec, runs, prompts, edges) -> list:
    s = scores_by_method(spec, runs.assign(method=runs.label), prompts, edges)
    return [s.get(lbl) for lbl in runs.label]


def _credits(items, credits, run_id) -> list:
    import numpy as np

    by_trace = {t: g.sort_values("pos").credit.to_numpy() for t, g in credits.groupby("trace_id")}
    return [np.nan_to_num(by_trace[it["trace"][run_id]]) for it in items]


def _circuit_result(cm, label: str, seed: int) -> dict:
    import numpy as np

    m, clean, empty = cm[label], cm["clean"], cm["empty"]
    f = faithfulness(m, clean, empty)
    cpr, cmd = area(f)
    P = len(clean)

    def stat(k):
        return lambda i: area(faithfulness(m[:, i], clean[i], empty[i]))[k]

    return dict(
        cpr=cpr,
        cmd=cmd,
        cpr_ci=bootstrap(stat(0), P, seed),
        cmd_ci=bootstrap(stat(1), P, seed),
        budgets=list(BUDGETS),
        faithfulness=[float(x) for x in f],
        clean_logit_diff=float(np.mean(clean)),
        ablated_logit_diff=float(np.mean(empty)),
    )


def _coverage(score, config) -> dict:
    """How many of the graph's edges a method scores (nonzero), and how its run
    stored them: ``summed`` over positions (every edge, as the baselines), or
    Unpack's ``position-resolved`` edges above ``edge_min_frac`` of Σ|seeds|,
    whose tail is tied at 0 (docs/RESULTS_BASELINES.md, "Which edges")."""
    cfg = json.loads(config) if isinstance(config, str) else {}
    sparse = cfg.get("position_edges", False) and cfg.get("edge_min_frac", 0) > 0
    stored = (
        f"position-resolved, |weight| >= {cfg['edge_min_frac']:g}·Σ|seeds|"
        if sparse
        else "summed over positions"
    )
    return dict(edges_scored=int((score != 0).sum()), n_edges=len(score), edge_storage=stored)


def _truth(model: str) -> set | None:
    """The toy's ground-truth heads (toy.json), or None for other models."""
    from unpack.loading import toy_facts

    facts = toy_facts(model)
    if not facts or facts.get("prev_heads") is None:
        return None
    return {f"attn_0_head_{h}" for h in facts["prev_heads"]} | {
        f"attn_1_head_{h}" for h in facts["induction_heads"]
    }


def _precision_recall(spec, score, truth: set) -> list[dict]:
    """Per budget: the circuit's heads (any end of a kept edge) against ``truth``."""
    from unpack.baselines.graph import edges

    parent, child, _ = edges(spec)
    out = []
    for b in BUDGETS:
        keep = _top(score, b)
        heads = {n for n in set(parent[keep]) | set(child[keep]) if n.startswith("attn_")}
        hit = len(heads & truth)
        out.append(
            dict(
                budget=b,
                n_heads=len(heads),
                precision=hit / len(heads) if heads else 0.0,
                recall=hit / len(truth),
            )
        )
    return out


def plot_faithfulness(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        if "faithfulness" in r:
            ax.plot(
                [100 * b for b in r["budgets"]],
                r["faithfulness"],
                marker="o",
                label=f"{r['label']} (CPR {r['cpr']:.2f}, CMD {r['cmd']:.2f})",
            )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (% of the graph)")
    ax.set_ylabel("faithfulness (mean ablation)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_results(results: list[dict]) -> str:
    """The table ``unpack evaluate`` prints."""
    lines = [
        f"{'method':14s} {'CPR [95% CI]':22s}  {'CMD [95% CI]':22s}  "
        f"{'comprehensiveness':22s}  {'sufficiency':22s}  s/prompt"
    ]
    for r in results:
        ci = lambda k: f"{r[k]:6.3f} [{r[k + '_ci'][0]:6.3f},{r[k + '_ci'][1]:6.3f}]"  # noqa: E731
        circ = f"{ci('cpr')}  {ci('cmd')}" if "cpr" in r else f"{'-':22s}  {'-':22s}"
        lines.append(
            f"{r['label']:14s} {circ}  {ci('comprehensiveness')}  {ci('sufficiency')}  "
            f"{r['seconds_per_prompt']:.3f}"
        )
    for r in results:
        if (
            r.get("edge_storage", "").startswith("position-resolved")
            and r["edges_scored"] < r["n_edges"] // 2
        ):
            lines.append(
                f"note: {r['label']} scores {r['edges_scored']:,} of {r['n_edges']:,} "
                f"edges ({r['edge_storage']}): past them its circuits take edges tied "
                "at 0 in graph order; for every edge ingest Unpack with "
                "--set position_edges=false"
            )
        if "faithfulness" in r:
            lines.append(
                f"faithfulness {r['label']}: "
                + ", ".join(
                    f"{100 * b:g}% {f:.3f}" for b, f in zip(r["budgets"], r["faithfulness"])
                )
            )
        if "vs_unpack" in r:
            lines.append(
                f"  {r['label']} vs unpack: "
                + ", ".join(f"{k} {v:.3f}" for k, v in r["vs_unpack"].items())
            )
        for g in r.get("ground_truth", []):
            lines.append(
                f"  ground truth {r['label']} at {100 * g['budget']:g}%: {g['n_heads']} "
                f"heads, precision {g['precision']:.2f}, recall {g['recall']:.2f}"
            )
    if results and "plot" in results[0]:
        lines.append(f"plot: {results[0]['plot']}")
    return "\n".join(lines)
