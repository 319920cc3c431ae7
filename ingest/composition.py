"""Composition report (docs/METHOD.md §10).

A head-role table assigns heads to classes (GPT-2 small's table of Wang et al.
is built in; any other model's comes from a CSV ``head,role``). A connection
``ROOT@WHERE:UPSTREAM:MODE`` says: reroot at every head of class ROOT at the
role position WHERE (§3 rerooting), and the heads of class UPSTREAM should feed
it through MODE. For each prompt and rooted class the direct interaction edges
from the rooted heads to every upstream head (§6, summed over positions and
over the class's heads) give one strength per head and mode; the candidates
are the attention heads of layer ``>= min_layer`` below the class's deepest
head. The rank of a class is that of its best head among the candidates,
ordered by ``|strength|`` (1 = strongest); the class is "found" when that head
has a nonzero edge. Modes: K, Q, V and "all" (their sum).

A connection is recovered with its mode when, in that mode, the class's median
rank is at most ``max_rank`` and in the best quarter of the candidates (rank 1
of 2 for a two-head layer), it is found in at least half of the prompts, and
that mode carries the largest part of the class-to-class interaction.

Rerooted traces missing for prompts already stored are ingested (the only
write path, :func:`ingest.run.ingest`) into the same run; with no prompts
stored at all the report raises :class:`NoData` with the ingest command.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from unpack.components import layer_head, short_label
from unpack.errors import InputError

from .queries import (
    NoData,
    markdown_table,
    pick_model_task,
    prompt_records,
    selection_sql,
    stored_prompts,
    write_outputs,
)
from .reroots import store_reroots
from .store import open_read_only as open_db

MODES = ("K", "Q", "V", "all")

# Wang et al. 2023, as listed in docs/METHOD.md §10.
GPT2_SMALL_ROLES = {
    "name_mover": ["9.9", "9.6", "10.0"],
    "backup_name_mover": ["10.10", "11.2", "9.0", "9.7"],
    "negative_name_mover": ["10.7", "11.10"],
    "s_inhibition": ["7.3", "7.9", "8.6", "8.10"],
    "induction": ["5.5", "5.8", "5.9", "6.9"],
    "duplicate_token": ["0.1", "0.10", "3.0"],
    "previous_token": ["2.2", "4.11"],
}

# task -> (connections, condition of the prompts that are rerooted)
DEFAULT_CONNECTIONS = {
    "ioi": (
        [
            "name_mover@END:s_inhibition:Q",
            "s_inhibition@END:induction+duplicate_token:V",
            "induction@S2:previous_token:K",
        ],
        "ioi_io",
    ),
    "induction": (["induction@END:previous_token:K"], None),
}


@dataclass(frozen=True)
class Connection:
    root: str  # class rerooted
    where: str  # role (or position) of the reroot
    upstream: tuple[str, ...]  # expected upstream classes
    mode: str  # expected mode

    @property
    def label(self) -> str:
        return f"{self.root}@{self.where} → {'+'.join(self.upstream)} via {self.mode}"


def norm_role(role: str) -> str:
    """'S-inhibition' -> 's_inhibition', 'previous token' -> 'previous_token'."""
    return re.sub(r"[^0-9a-z]+", "_", str(role).strip().lower()).strip("_")


def head_name(head: str) -> str:
    """``'9.9'`` or ``'attn_9_head_9'`` -> ``'attn_9_head_9'``."""
    h = str(head).strip()
    m = re.fullmatch(r"(\d+)\.(\d+)", h)
    if m:
        return f"attn_{m[1]}_head_{m[2]}"
    if re.fullmatch(r"attn_\d+_head_\d+", h):
        return h
    raise InputError(f"head {head!r}: write it as L.H (9.9) or attn_L_head_H")


def roles_table(roles=None) -> dict[str, list[str]]:
    """role -> head names, from a CSV path (columns head,role), a dict role ->
    heads, or None for GPT-2 small's built-in table."""
    if roles is None:
        roles = GPT2_SMALL_ROLES
    if isinstance(roles, (str, Path)):
        p = Path(roles)
        if not p.is_file():
            raise InputError(
                f"--roles {str(p)!r} does not exist; give a CSV with columns head,role"
            )
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "head" not in cols or "role" not in cols:
                raise InputError(
                    f"--roles {str(p)!r}: the header must name columns head and role "
                    f"(found {reader.fieldnames})"
                )
            out: dict[str, list[str]] = {}
            for i, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                if not row.get("head") and not row.get("role"):
                    continue
                if not row.get("role"):
                    raise InputError(f"--roles {str(p)!r} line {i}: empty role")
                try:
                    h = head_name(row["head"])
                except InputError as e:
                    raise InputError(f"--roles {str(p)!r} line {i}: {e}") from None
                out.setdefault(norm_role(row["role"]), []).append(h)
        if not out:
            raise InputError(f"--roles {str(p)!r} has no rows; add lines like 9.9,name_mover")
        return out
    return {norm_role(r): [head_name(h) for h in hs] for r, hs in dict(roles).items()}


def parse_connection(spec: str, table: dict) -> Connection:
    m = re.fullmatch(r"([^@:]+)@([^@:]+):([^@:]+):(K|Q|V)", str(spec).strip())
    if not m:
        raise InputError(
            f"connection {spec!r} must look like ROOT@WHERE:UPSTREAM:MODE, e.g. "
            "induction@S2:previous_token:K (UPSTREAM may join classes with +)"
        )
    root, where, ups, mode = norm_role(m[1]), m[2].strip(), m[3], m[4]
    ups = tuple(norm_role(u) for u in ups.split("+"))
    for c in (root, *ups):
        if c not in table:
            raise InputError(
                f"connection {spec!r}: class {c!r} is not in the role table "
                f"(classes: {', '.join(table)})"
            )
    return Connection(root, where, ups, mode)


def is_gpt2_small(row) -> bool:
    return (
        row.get("model_type") == "gpt2"
        and row.get("n_layers") == 12
        and row.get("n_heads") == 12
        and row.get("d_model") == 768
    )


def ingest_command(db, model, task, conns, table, n) -> str:
    """The `unpack ingest` command that stores the rerooted traces."""
    by_where: dict[str, list[str]] = {}
    for c in conns:
        by_where.setdefault(c.where, [])
        by_where[c.where] += [
            short_label(h) for h in table[c.root] if short_label(h) not in by_where[c.where]
        ]
    roots = " ".join(f'"{",".join(hs)}@{w}"' for w, hs in by_where.items())
    return (
        f"unpack ingest --model {model or 'MODEL'} --task {task} --n {n} --roots {roots} --db {db}"
    )


# ------------------------------------------------------------------ reading the store


def _head_edges(con, model, task, preset, condition, root_specs) -> pd.DataFrame:
    """Direct edges from each rooted head to upstream heads, summed over positions:
    run, text, target, distractor, root, child, child_layer, mode, w."""
    sel, params = selection_sql(
        model=model, task=task, preset=preset, condition=condition, root=list(root_specs)
    )
    return con.execute(
        f"""
        WITH sel AS ({sel})
        SELECT s.run_id, s.text, s.target, coalesce(s.distractor, '') AS distractor, s.root,
               e.child, e.child_layer,
               e.mode, sum(e.weight) AS w
        FROM sel s JOIN edges e ON e.trace_id = s.trace_id AND e.parent = s.root_component
        WHERE e.child_head IS NOT NULL AND e.mode IN ('K', 'Q', 'V')
        GROUP BY ALL""",
        params,
    ).df()


# ------------------------------------------------------------------ ranks


def rank_of(strength: np.ndarray, members: np.ndarray) -> float:
    """Rank (1 = strongest by |strength|) of the best member; NaN if no member
    has a nonzero strength."""
    a = np.abs(strength)
    if not members.any():
        return float("nan")
    best = a[members].max()
    if best <= 0:
        return float("nan")
    return float(1 + (a > best).sum())


def compute_ranks(
    edges: pd.DataFrame,
    complete: dict,
    table: dict,
    n_heads: int,
    min_layer: int,
    groups: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(ranks, strengths)``. ranks: one row per prompt, rooted class, upstream
    group and mode with its rank. strengths: per prompt, rooted class, upstream
    group and mode K/Q/V, the summed signed strength to the group's heads.
    ``groups``: label -> classes ranked together (default: each class alone)."""
    groups = groups or {c: (c,) for c in table}
    head_class = {}
    for cls, hs in table.items():
        for h in hs:
            head_class.setdefault(h, []).append(cls)
    rank_rows, str_rows = [], []
    for (root_cls, where), (specs, prompts) in complete.items():
        deepest = max(layer_head(h)[0] for h in table[root_cls])
        cands = [f"attn_{L}_head_{h}" for L in range(min_layer, deepest) for h in range(n_heads)]
        if not cands:
            continue
        index = {h: i for i, h in enumerate(cands)}
        sub = edges[edges["root"].isin(specs) & edges["child"].isin(index)]
        by_prompt = {k: g for k, g in sub.groupby(["run_id", "text", "target", "distractor"])}
        for key in prompts:
            M = np.zeros((3, len(cands)))
            g = by_prompt.get(key)
            if g is not None:
                for m_i, m in enumerate(("K", "Q", "V")):
                    gm = g[g["mode"] == m]
                    np.add.at(M[m_i], gm["child"].map(index).to_numpy(int), gm["w"].to_numpy())
            M = np.vstack([M, M.sum(axis=0)])
            for up, classes in groups.items():
                members = np.array(
                    [any(c in head_class.get(h, ()) for c in classes) for h in cands]
                )
                if not members.any():
                    continue
                for m_i, m in enumerate(MODES):
                    rank_rows.append(
                        (key, root_cls, where, up, m, rank_of(M[m_i], members), len(cands))
                    )
                    if m != "all":
                        str_rows.append((key, root_cls, up, m, M[m_i][members].sum()))
    ranks = pd.DataFrame(
        rank_rows,
        columns=["prompt", "root_class", "where", "upstream", "mode", "rank", "n_candidates"],
    )
    strengths = pd.DataFrame(
        str_rows, columns=["prompt", "root_class", "upstream", "mode", "strength"]
    )
    return ranks, strengths


# ------------------------------------------------------------------ the report


@dataclass
class CompositionReport:
    markdown: str
    tables: dict = field(default_factory=dict)
    connections: pd.DataFrame | None = None
    figure: object = None

    def write(self, out_dir) -> list[Path]:
        return write_outputs(out_dir, "composition", self.markdown, self.tables, self.figure)


def summarize(ranks: pd.DataFrame) -> pd.DataFrame:
    """Median and mean rank and share of prompts found, per rooted class,
    upstream class and mode."""
    grouped = ranks.groupby(["root_class", "where", "upstream", "mode"], sort=False)
    g = grouped["rank"]
    out = pd.DataFrame(
        {
            "median_rank": g.median(),
            "mean_rank": g.mean(),
            "share_found": g.apply(lambda r: r.notna().mean()),
            "n_prompts": g.size(),
            "n_candidates": grouped["n_candidates"].max(),
        }
    ).reset_index()
    return out


def judge(conns, summary: pd.DataFrame, strengths: pd.DataFrame, max_rank: int) -> pd.DataFrame:
    """One row per connection: rank in its mode, the mode carrying most of the
    class-to-class interaction, and whether it is recovered with its mode."""
    rows = []
    for c in conns:
        up = "+".join(c.upstream)
        s = summary[
            (summary["root_class"] == c.root)
            & (summary["where"] == c.where)
            & (summary["upstream"] == up)
        ]
        st = strengths[(strengths["root_class"] == c.root) & (strengths["upstream"] == up)]
        per_mode = st.groupby("mode")["strength"].mean()  # mean over prompts
        per_mode = {m: float(per_mode.get(m, 0.0)) for m in ("K", "Q", "V")}
        tot = sum(abs(v) for v in per_mode.values())
        dominant = max(per_mode, key=lambda m: abs(per_mode[m])) if tot > 0 else None
        sm = s[s["mode"] == c.mode]
        if sm.empty:
            rows.append(
                dict(
                    connection=c.label,
                    expected_mode=c.mode,
                    median_rank=np.nan,
                    share_found=0.0,
                    dominant_mode=dominant,
                    mode_share=np.nan,
                    recovered=False,
                    verdict="no prompts with these reroots",
                )
            )
            continue
        med, found = float(sm["median_rank"].iloc[0]), float(sm["share_found"].iloc[0])
        share = abs(per_mode[c.mode]) / tot if tot > 0 else float("nan")
        # at most max_rank, and within the best quarter of the candidates (chance is half)
        bound = min(max_rank, max(1, int(sm["n_candidates"].iloc[0]) // 4))
        ranked = np.isfinite(med) and med <= bound and found >= 0.5
        ok = bool(ranked and dominant == c.mode)
        if ok:
            verdict = (
                f"recovered via {c.mode}: median rank {med:g}, found in {found:.0%} of "
                f"prompts, {c.mode} carries {share:.0%} of the K/Q/V interaction"
            )
        elif ranked:
            verdict = (
                f"found (median rank {med:g} via {c.mode}) but the interaction is mostly "
                f"{dominant} ({c.mode}: {share:.0%}): not recovered with its mode"
            )
        else:
            rank = f"median rank {med:g}" if np.isfinite(med) else "never ranked"
            verdict = (
                f"not recovered: {rank} via {c.mode}, found in {found:.0%} of prompts "
                f"(needs a median rank <= {bound} and >= 50%); the interaction is "
                f"mostly {dominant}"
            )
        rows.append(
            dict(
                connection=c.label,
                expected_mode=c.mode,
                median_rank=med,
                share_found=found,
                dominant_mode=dominant,
                mode_share=share,
                recovered=ok,
                verdict=verdict,
                **{f"strength_{m}": per_mode[m] for m in ("K", "Q", "V")},
            )
        )
    return pd.DataFrame(rows)


def matrices(summary: pd.DataFrame, stat: str) -> dict[str, pd.DataFrame]:
    """mode -> rooted class x upstream class matrix of ``stat``."""
    out = {}
    for m in MODES:
        s = summary[summary["mode"] == m]
        mat = s.assign(row=s["root_class"] + "@" + s["where"]).pivot_table(
            index="row", columns="upstream", values=stat, aggfunc="first", dropna=False
        )
        out[m] = mat
    return out


def _figure(summary: pd.DataFrame):
    """Median-rank matrices, one panel per mode, one colour scale (grey: never found)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mats = matrices(summary, "median_rank")
    first = mats["all"]
    top = max(
        2.0,
        np.nanmax(
            [
                np.nanmax(m.to_numpy(float)) if np.isfinite(m.to_numpy(float)).any() else 1.0
                for m in mats.values()
            ]
        ),
    )
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="lightgrey")
    fig, axes = plt.subplots(
        1, 4, figsize=(3 + 2.4 * len(first.columns), 1.4 + 0.5 * len(first)), squeeze=False
    )
    for ax, m in zip(axes[0], ("all", "K", "Q", "V")):
        mat = mats[m].reindex(index=first.index, columns=first.columns)
        v = mat.to_numpy(float)
        ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=1, vmax=top, aspect="auto")
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                ax.text(
                    j,
                    i,
                    "–" if np.isnan(v[i, j]) else f"{v[i, j]:g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
        ax.set_xticks(range(v.shape[1]), mat.columns, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(v.shape[0]), mat.index if m == "all" else [""] * v.shape[0], fontsize=7)
        ax.set_title(f"median rank, {m}", fontsize=9)
    fig.tight_layout()
    return fig


def composition_report(
    db,
    *,
    model=None,
    task=None,
    preset: str = "kqv_aligned",
    roles=None,
    connections=None,
    n: int = 100,
    min_layer: int = 1,
    max_rank: int = 3,
    condition=None,
    ingest_missing: bool = True,
    tracer=None,
    progress: bool = False,
    make_figure: bool = True,
) -> CompositionReport:
    """The report on the store ``db`` (see the module docstring). ``tracer``: a
    ready :class:`unpack.Tracer` for ingesting missing reroots (default: load the
    model by its stored name)."""
    if not isinstance(n, int) or n < 1:
        raise InputError(f"--n {n!r} must be a positive integer")
    if min_layer < 0 or max_rank < 1:
        raise InputError("--min-layer must be >= 0 and --max-rank >= 1")
    con = open_db(db)
    try:
        model, task, info = pick_model_task(con, db, model, task, preset)
        table, conns, condition = _connections(model, task, info, roles, connections, condition)
        needed = {f"{h}@{c.where}" for c in conns for h in table[c.root]}
        command = ingest_command(db, model, task, conns, table, n)
        records, config = _missing(
            con, db, model, task, preset, condition, needed, n, ingest_missing, command
        )
    finally:
        con.close()

    if records:
        store_reroots(records, db, model, preset, config, sorted(needed), tracer, progress, command)

    con = open_db(db)
    try:
        stored = stored_prompts(con, model, task, preset, condition)
        edges = _head_edges(con, model, task, preset, condition, needed)
    finally:
        con.close()
    complete = _complete(stored, conns, table, n)
    if not any(keys for _, keys in complete.values()):
        raise NoData(
            f"database {db!s} has {task} prompts for {model!r} but none rerooted at "
            f"{', '.join(sorted(needed))}",
            command,
        )
    groups = {c: (c,) for c in table}
    groups.update({"+".join(c.upstream): c.upstream for c in conns})
    ranks, strengths = compute_ranks(edges, complete, table, info["n_heads"], min_layer, groups)
    summary = summarize(ranks)
    verdicts = judge(conns, summary, strengths, max_rank)
    md = _markdown(model, task, preset, condition, min_layer, max_rank, complete, summary, verdicts)
    fig = _figure(summary) if make_figure and len(summary) else None
    return CompositionReport(
        md,
        {
            "ranks": summary,
            "connections": verdicts,
            "per_prompt": ranks.assign(prompt=ranks["prompt"].map(lambda k: k[1])),
        },
        verdicts,
        fig,
    )


def _connections(model, task, info, roles, connections, condition):
    """``(role table, connections, condition)`` of the report, each head checked
    against the model's shape."""
    if roles is None and not is_gpt2_small(info):
        raise InputError(
            f"model {model!r} is not GPT-2 small, so the built-in head-role "
            "table does not apply: pass --roles FILE.csv with columns head,role"
        )
    table = roles_table(roles)
    specs_default, cond_default = DEFAULT_CONNECTIONS.get(task, ([], None))
    conns = [parse_connection(s, table) for s in (connections or specs_default)]
    if not conns:
        raise InputError(
            f"no default connections for task {task!r}: pass --connections ROOT@WHERE:UPSTREAM:MODE"
        )
    for c in conns:
        for h in table[c.root]:
            L, H = layer_head(h)
            if L >= info["n_layers"] or H >= info["n_heads"]:
                raise InputError(
                    f"role table: head {h} ({c.root}) does not exist in {model} "
                    f"({info['n_layers']} layers x {info['n_heads']} heads)"
                )
    return table, conns, condition if condition is not None else cond_default


def _missing(con, db, model, task, preset, condition, needed, n, ingest_missing, command):
    """``(records, run config)`` of the stored prompts that lack some of the
    ``needed`` reroots, as many as it takes to reach ``n`` complete prompts."""
    stored = stored_prompts(con, model, task, preset, condition)
    if stored.empty:
        raise NoData(
            f"database {db!s} has no {task} prompts for model {model!r} (preset "
            f"{preset}{', condition ' + condition if condition else ''})",
            command,
        )
    has = stored["roots"].map(set)
    complete = stored[has.map(lambda r: needed <= r)]
    missing = stored[~has.map(lambda r: needed <= r)]
    todo = missing.head(max(0, n - len(complete)))
    records = prompt_records(con, todo["prompt_id"]) if len(todo) and ingest_missing else []
    runs = sorted(set(todo["run_id"])) if records else []
    config = (
        json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [runs[0]]).fetchone()[0])
        if runs
        else None
    )
    return records, config


def _complete(stored: pd.DataFrame, conns, table: dict, n: int) -> dict:
    """Per (rooted class, where): the root specs and the first ``n`` prompts
    (run, text, target, distractor) that have all of them."""
    has = stored["roots"].map(set)
    complete = {}
    for c in conns:
        specs = {f"{h}@{c.where}" for h in table[c.root]}
        ok = stored[has.map(lambda r: specs <= r)].head(n)
        keys = list(zip(ok["run_id"], ok["text"], ok["target"], ok["distractor"]))
        complete[(c.root, c.where)] = (specs, keys)
    return complete


def _markdown(
    model, task, preset, condition, min_layer, max_rank, complete, summary, verdicts
) -> str:
    n_prompts = max((len(k) for _, k in complete.values()), default=0)
    md = [
        f"# Composition (docs/METHOD.md §10): {model}",
        "",
        f"Task {task}{' (' + condition + ')' if condition else ''}, preset {preset}, "
        f"{n_prompts} prompts. Candidates: attention heads of layer >= {min_layer} below the "
        "rooted class; rank 1 = the strongest |interaction| (direct edges, summed over "
        f"positions and the class's heads). Recovered: median rank <= {max_rank} (and in the "
        "best quarter of the candidates) in the expected mode, found in >= 50% of prompts, "
        "and that mode carrying the largest part of the K/Q/V interaction.",
        "",
        "## Connections",
        "",
    ]
    for v in verdicts.itertuples():
        md.append(f"- **{v.connection}**: {v.verdict}.")
    if len(verdicts):
        md += [
            "",
            "Mean interaction strength from the rooted class to the expected class, per mode:",
            "",
            markdown_table(
                verdicts[
                    [
                        "connection",
                        "strength_K",
                        "strength_Q",
                        "strength_V",
                        "median_rank",
                        "share_found",
                        "recovered",
                    ]
                ]
            ),
        ]
    md += [
        "",
        "## Rank matrices (rows: rerooted class, columns: upstream class)",
        "",
        "Cell: median rank / mean rank / share of prompts where found; – never found.",
    ]
    med, mean, found = (matrices(summary, s) for s in ("median_rank", "mean_rank", "share_found"))
    for m in ("all", "K", "Q", "V"):
        cells = med[m].copy().astype(object)
        for r in cells.index:
            for c in cells.columns:
                a, b, f = med[m].loc[r, c], mean[m].loc[r, c], found[m].loc[r, c]
                cells.loc[r, c] = (
                    "" if pd.isna(f) else "–" if pd.isna(a) else f"{a:g} / {b:.2f} / {f:.0%}"
                )
        title = "all modes (K+Q+V)" if m == "all" else f"mode {m}"
        md += [
            "",
            f"### {title}",
            "",
            markdown_table(cells.reset_index().rename(columns={"row": "rooted \\ upstream"})),
        ]
    return "\n".join(md).rstrip()
