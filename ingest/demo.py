"""``unpack demo``: IOI with ABC controls on SmolLM2 into ./unpack.duckdb, then a
few example SQL queries with their results; then induction prompts on SmolLM2
and on every checkpoint of the toy ladder, for Compare across size and training.
With ``--real``, also IOI with controls on every other real model that is here
(docs/MODELS.md), for Compare across real sizes."""

from __future__ import annotations

import time
from pathlib import Path

from unpack.components import parse_component


def sql_literal(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def demo_queries(model: str, head: str | None, path_head: str | None) -> list[tuple[str, str]]:
    """``(title, sql)`` pairs; the SQL is exactly what one would type. ``head``: a
    rerooted head (traced at END); ``path_head``: a head that top paths go through."""
    m = sql_literal(model)
    q = [
        (
            "Credit at each IOI role, by condition (root = the target logit)",
            f"""SELECT condition, role, n_prompts,
       round(mean_credit, 3) AS mean_credit, round(share_negative, 2) AS share_negative
FROM credit_by_role
WHERE model = {m} AND task = 'ioi' AND root = 'target'
ORDER BY condition, role""",
        ),
        (
            "Top paths of the first prompt",
            f"""SELECT rank, round(score, 3) AS score, round(score_pct, 1) AS pct, chain
FROM path_info
WHERE model = {m} AND root = 'target'
  AND prompt_id = (SELECT min(prompt_id) FROM trace_info WHERE model = {m})
ORDER BY rank
LIMIT 6""",
        ),
        (
            "Heads with the most credit flowing through them at END (ioi_io prompts)",
            f"""SELECT f.component, round(avg(f.flow), 3) AS mean_flow
FROM component_flows f JOIN trace_info t USING (trace_id)
WHERE t.model = {m} AND t.root = 'target' AND t.condition = 'ioi_io'
  AND f.head IS NOT NULL AND f.pos = t.target_pos
GROUP BY f.component
ORDER BY abs(mean_flow) DESC
LIMIT 5""",
        ),
    ]
    if head:
        q.append(
            (
                f"Upstream heads feeding {head} at END, the strongest two per mode",
                f"""SELECT mode, child AS upstream_head, round(mean_weight, 4) AS mean_weight
FROM head_interactions
WHERE model = {m} AND condition = 'ioi_io' AND root = {sql_literal(head + '@END')}
  AND parent = root_component
QUALIFY row_number() OVER (PARTITION BY mode ORDER BY abs(mean_weight) DESC) <= 2
ORDER BY mode, abs(mean_weight) DESC""",
            )
        )
    if path_head:
        q.append(
            (
                f"Top paths through {path_head}",
                f"""SELECT p.condition, round(p.score_pct, 1) AS pct, p.chain
FROM path_hops h JOIN path_info p USING (path_id)
WHERE p.model = {m} AND p.root = 'target' AND h.component = {sql_literal(path_head)}
ORDER BY abs(p.score) DESC
LIMIT 5""",
            )
        )
    return q


def explore_hint(db) -> str:
    """A command that runs as printed, from any directory: this environment's
    Python (where duckdb is installed), the store by its absolute path."""
    import json
    import shlex
    import sys

    code = (
        f"import duckdb; print(duckdb.connect({json.dumps(str(Path(db).resolve()))}, "
        'read_only=True).sql("SELECT * FROM credit_by_role"))'
    )
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def show_queries(db, queries, out=print) -> None:
    """Run each query on a read-only connection and print it with its result."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        for title, sql in queries:
            df = con.sql(sql).df()
            out(f"\n-- {title}\n{sql};\n")
            out(df.to_string(index=False) if len(df) else "(no rows)")
    finally:
        con.close()


def busiest_path_head(db, model: str) -> str | None:
    """The head that the most stored top paths of ``model`` go through."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT h.component FROM path_hops h JOIN path_info p USING (path_id) "
            "WHERE p.model = ? AND h.head IS NOT NULL GROUP BY h.component "
            "ORDER BY count(*) DESC, h.component LIMIT 1",
            [model],
        ).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def pick_heads(tracer, record, k: int = 3) -> list[str]:
    """The ``k`` heads with the largest |credit flow| at END on one prompt."""
    res = tracer.trace(record.text, target=record.target, distractor=record.distractor)
    end = res.target_pos
    heads = [
        (abs(float(v[end])), name)
        for name, v in res.component_flow.items()
        if parse_component(name)[0] == "head"
    ]
    return [name for _, name in sorted(heads, reverse=True)[:k]]


SMOL_INDUCTION_N = 4  # induction prompts on the demo's model, beside the ladder on Compare


def ingest_induction(tracer, model: str, db, n: int, batch_size: int, progress: bool):
    """``n`` induction prompts on the demo's model (root: the target), so that
    Compare on the induction task shows it beside the toy ladder's sizes."""
    from unpack.tasks import induction

    from .run import ingest

    print(f"\n{n} induction prompts on {model} (for Compare beside the toy ladder)", flush=True)
    s = ingest(
        induction(tracer.tokenizer, n, seed=0),
        tracer=tracer,
        model_name=model,
        db=db,
        batch_size=batch_size,
        progress=progress,
    )
    print(f"{model}: {s.n_ok} induction prompts traced ({s.n_skipped} already stored)", flush=True)
    return s


def ingest_real(
    db, n: int, batch_size: int, progress: bool, device: str, dtype, done: tuple = ()
) -> list[str]:
    """IOI with ABC controls (``n`` prompts, 4 records each; seed 0, the demo's
    prompts) on every real model of ``unpack models list`` that is installed or
    fetched, except ``done``; a model that cannot be traced here is said and
    skipped. Returns the models stored."""
    from unpack import Tracer
    from unpack.errors import InputError
    from unpack.loading import load_model
    from unpack.models import rows
    from unpack.tasks import ioi

    from .run import ingest

    here = [r["alias"] for r in rows() if r["installed"] and r["alias"] not in done]
    missing = [r["alias"] for r in rows() if not r["installed"]]
    print(
        f"\nreal models: IOI with controls ({n} prompts x 4 conditions) on {', '.join(here) or 'none'}"
        + (f"; not fetched: {', '.join(missing)} (`unpack models fetch ALIAS`)" if missing else ""),
        flush=True,
    )
    stored = []
    for alias in here:
        t0 = time.perf_counter()
        try:
            mdl, tok = load_model(alias, dtype=dtype, device=device)
            tracer = Tracer(model=mdl, tokenizer=tok)
        except InputError as e:
            print(f"{alias}: skipped ({e})", flush=True)
            continue
        s = ingest(
            ioi(tok, n, seed=0, controls=True),
            tracer=tracer,
            model_name=alias,
            db=db,
            batch_size=batch_size,
            progress=progress,
        )
        print(
            f"{alias}: {s.n_ok} records traced ({s.n_skipped} already stored) in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        stored.append(alias)
        del tracer, mdl
    return stored


def run_demo(
    model: str = "smollm2-135m",
    n: int = 3,
    db="unpack.duckdb",
    batch_size: int = 4,
    progress: bool = True,
    device: str = "cpu",
    dtype=None,
    ladder_n: int = 0,
    threads: int | None = None,
    real_n: int = 0,
) -> int:
    """The demo store (see the module docstring); ``threads``: torch's CPU threads
    (None: leave torch's setting)."""
    import torch

    from unpack import Tracer
    from unpack.loading import load_model
    from unpack.tasks import ioi

    from .run import ingest

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    print(f"loading {model} ...", flush=True)
    mdl, tok = load_model(model, dtype=dtype, device=device)
    tracer = Tracer(model=mdl, tokenizer=tok)
    records = ioi(tok, n, seed=0, controls=True)
    heads = pick_heads(tracer, records[0])
    print(
        f"{len(records)} IOI records ({n} prompts x 4 conditions); rerooting at "
        f"{', '.join(h + '@END' for h in heads)}",
        flush=True,
    )
    summary = ingest(
        records,
        tracer=tracer,
        model_name=model,
        db=db,
        roots=[",".join(heads) + "@END"],
        batch_size=batch_size,
        progress=progress,
    )
    print(summary.format())
    show_queries(db, demo_queries(model, heads[0] if heads else None, busiest_path_head(db, model)))
    if ladder_n:
        from .ladder import ingest_ladder, show_ladder

        ingest_induction(tracer, model, db, min(ladder_n, SMOL_INDUCTION_N), batch_size, progress)
        print(
            f"\nthe toy ladder: {ladder_n} induction prompts on every size and training step",
            flush=True,
        )
        ingest_ladder(db, n=ladder_n, progress=progress)
        show_ladder(db)
    if real_n:
        ingest_real(db, real_n, batch_size, progress, device, dtype, done=(model,))
    print(
        f"\ndone in {time.perf_counter() - t0:.0f} s. Explore it yourself, e.g.:\n"
        f"  {explore_hint(db)}"
    )
    return 0 if summary.n_ok or summary.n_skipped else 1
