"""The ingest: prompt records -> batched traces -> DuckDB.

A run is one (model, preset, config); a prompt within a run is identified by a
hash of its task, text, target and distractor, and each of its traces by its
root. Each batch is written in one transaction, so a killed ingest leaves whole
prompts only; the same command run again skips every prompt already stored (ok
or failed), and a run that names new roots adds only the missing traces to the
prompts already stored (never a second copy of a prompt).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from unpack.errors import InputError

from . import rows, schema as S, store
from .rows import Item, Root

TABLES = ("prompts",) + S.CHILD_TABLES  # what one batch writes


@dataclass
class Summary:
    db: str
    model: str
    preset: str
    run_id: int
    n_input: int = 0
    n_skipped: int = 0  # already stored by an earlier ingest of this run
    n_duplicates: int = 0  # the same prompt twice in the input
    n_ok: int = 0  # traced and stored now
    n_failed: int = 0
    trace_s: float = 0.0
    write_s: float = 0.0
    rows: dict = field(default_factory=dict)  # table -> rows of this run
    db_bytes: int = 0
    db_prompts: int = 0  # prompts in the whole database, all runs
    errors: list = field(default_factory=list)  # (where, reason) of the first few failures
    warnings: list = field(default_factory=list)  # about the whole run (e.g. roles no prompt has)

    @property
    def n_done(self) -> int:
        return self.n_ok + self.n_failed

    def format(self) -> str:
        total = self.trace_s + self.write_s
        lines = [
            f"ingest finished: model {self.model}, preset {self.preset}, run {self.run_id}, "
            f"database {self.db}",
            f"  prompts: {self.n_input} in the input, {self.n_skipped} already stored, "
            f"{self.n_done} done now ({self.n_ok} ok, {self.n_failed} failed)"
            + (f", {self.n_duplicates} duplicates skipped" if self.n_duplicates else ""),
        ]
        if self.n_done:
            lines.append(
                f"  time: tracing {self.trace_s:.1f} s, writing {self.write_s:.2f} s "
                f"({100 * self.write_s / max(total, 1e-9):.1f}% of the total); "
                f"{self.n_done / max(total, 1e-9):.2f} prompts/s"
            )
        lines.append("  rows in this run: " + ", ".join(f"{t} {n:,}" for t, n in self.rows.items()))
        per = (
            f", {self.db_bytes / self.db_prompts / 1024:.1f} KiB per prompt"
            if self.db_prompts
            else ""
        )
        lines.append(
            f"  database: {self.db_bytes / 2**20:.2f} MiB for {self.db_prompts:,} "
            f"prompts of all runs{per}"
        )
        for where, reason in self.errors:
            lines.append(f"  failed: {where}: {reason}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        if self.n_failed > len(self.errors):
            lines.append(
                f"  ... {self.n_failed - len(self.errors)} more failed; "
                "see SELECT seq, text, error FROM prompts WHERE status = 'failed'"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------ roots

_SHORT = re.compile(r"^(\d+|\*)\.(\d+|\*)$")  # 9.9 -> attn_9_head_9


def split_roots(specs) -> list[tuple[str, list[str], str]]:
    """``(spec, component patterns, where)`` for each root spec, checked for shape
    only (no model needed): ``COMPONENTS@WHERE``, ``L.H`` expanded."""
    out = []
    for spec in specs or ():
        for part in str(spec).split():
            comps, at, where = part.rpartition("@")
            if not at or not comps or not where or "" in comps.split(","):
                raise InputError(
                    f"root {part!r} must look like COMPONENT@ROLE or COMPONENT@POSITION, "
                    "e.g. attn_9_head_9@END, 9.9,9.6@END or mlp_0@-1"
                )
            pats = []
            for c in comps.split(","):
                m = _SHORT.match(c)
                pats.append(f"attn_{m[1]}_head_{m[2]}" if m else c)
            out.append((part, pats, where))
    return out


def parse_roots(specs, names: list[str]) -> list[tuple[str, str]]:
    """``(component, where)`` for each root spec ``COMPONENTS@WHERE``.

    COMPONENTS: one or more names separated by commas; ``L.H`` is short for
    ``attn_L_head_H`` and ``*`` matches any layer or head (``attn_9_head_*``).
    WHERE: a role of the prompt (``END``, ``S2``, ...) or a token position
    (negative counts from the end). ``names`` are the model's components."""
    out: list[tuple[str, str]] = []
    for part, pats, where in split_roots(specs):
        for c in pats:
            pattern = re.compile("^" + re.escape(c).replace(r"\*", r"\d+") + "$")
            found = [n for n in names if pattern.match(n)]
            if not found:
                raise InputError(
                    f"root {part!r}: no component {c!r} in this model "
                    f"(components look like {names[0]}, {names[-1]})"
                )
            out += [(n, where) for n in found if (n, where) not in out]
    return out


def resolve_roots(record, roots: list[tuple[str, str]]) -> tuple[list[Root], list[str]]:
    """The target trace plus one trace per root this prompt has; a root at a role
    the prompt lacks is skipped with a warning."""
    out, warnings = [Root("target")], []
    for comp, where in roots:
        spec = f"{comp}@{where}"
        if re.fullmatch(r"-?\d+", where):
            pos = int(where)
        elif where in (record.roles or {}):
            pos = int(record.roles[where])
        else:
            warnings.append(f"root {spec} skipped: the prompt has no role {where!r}")
            continue
        out.append(Root(spec, comp, f"{comp}@{pos}"))
    return out, warnings


def prompt_key(record) -> str:
    blob = json.dumps(
        [record.task, record.text, record.target, record.distractor], ensure_ascii=False
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    import unpack

    version = getattr(unpack, "__version__", "unknown")
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


# ------------------------------------------------------------------ tracing


def trace_items(tracer, items: list[Item], config: dict, batch_size: int) -> None:
    """Trace every root of every item; a prompt that fails gets ``error`` set."""
    inputs, owner = [], []
    for i, it in enumerate(items):
        r = it.record
        for root in it.roots:
            inputs.append(
                {"text": r.text, "target": r.target, "distractor": r.distractor, "root": root.arg}
            )
            if (r.metadata or {}).get("corrupt"):  # the patching baselines' corrupted prompt
                inputs[-1]["corrupt"] = r.metadata["corrupt"]
            owner.append(i)
    kw = {k: v for k, v in config.items() if k != "preset"}
    t0 = time.perf_counter()
    try:
        out = tracer.trace_batch(
            inputs, preset=config["preset"], batch_size=batch_size, on_error="collect", **kw
        )
    except Exception as e:  # one prompt broke the batch: trace them one by one
        if len(items) == 1:
            items[0].error = f"{type(e).__name__}: {e}" if not isinstance(e, InputError) else str(e)
            items[0].trace_s = time.perf_counter() - t0
            return
        for it in items:
            trace_items(tracer, [it], config, batch_size)
        return
    dt = (time.perf_counter() - t0) / len(items)
    for it in items:
        it.results, it.trace_s = [], dt
    for i, res in zip(owner, out):
        it = items[i]
        if hasattr(res, "token_credit"):
            it.results.append(res)
        elif it.error is None:
            it.error = getattr(res, "error", None) or repr(res)
    for it in items:
        if it.error:
            it.results = None
        else:
            it.warnings += [w for res in it.results for w in res.warnings if w not in it.warnings]


# ------------------------------------------------------------------ the store side


def _now():
    return datetime.now(timezone.utc).replace(tzinfo=None)


# models columns of migration 0004, taken from unpack.loading.model_info
MODEL_FACTS = ("n_kv_heads", "d_head", "family", "parallel_residual", "revision", "step")


def _model_id(conn, name: str, info: dict) -> int:
    m = S.models
    found = conn.execute(sa.select(m.c.model_id).where(m.c.name == name)).scalar()
    if found is not None:
        return found
    mid = store.next_id(conn, m.c.model_id)
    conn.execute(
        m.insert().values(
            model_id=mid,
            name=name,
            model_type=info.get("model_type"),
            n_layers=info.get("n_layers"),
            n_heads=info.get("n_heads"),
            d_model=info.get("d_model"),
            n_params=info.get("n_params"),
            info=json.dumps(info, sort_keys=True, default=str),
            created_at=_now(),
            **{k: info.get(k) for k in MODEL_FACTS},
        )
    )
    return mid


def _run_id(conn, model_id: int, config: dict) -> int:
    r = S.runs
    h = config_hash(config)
    key = (r.c.model_id == model_id) & (r.c.preset == config["preset"]) & (r.c.config_hash == h)
    found = conn.execute(sa.select(r.c.run_id).where(key)).scalar()
    now = _now()
    if found is not None:
        conn.execute(
            r.update()
            .where(r.c.run_id == found)
            .values(status="running", updated_at=now, finished_at=None, code_version=code_version())
        )
        return found
    rid = store.next_id(conn, r.c.run_id)
    conn.execute(
        r.insert().values(
            run_id=rid,
            model_id=model_id,
            preset=config["preset"],
            config=json.dumps(config, sort_keys=True),
            config_hash=h,
            edge_min_frac=config.get("edge_min_frac"),
            code_version=code_version(),
            status="running",
            started_at=now,
            updated_at=now,
            method=config.get("method", "unpack"),
            method_params=json.dumps(
                {k: v for k, v in config.items() if k not in ("preset", "method")}, sort_keys=True
            )
            if "method" in config
            else None,
        )
    )
    return rid


def _first_ids(conn) -> dict[str, int]:
    return {
        "prompt_id": store.next_id(conn, S.prompts.c.prompt_id),
        "trace_id": store.next_id(conn, S.traces.c.trace_id),
        "path_id": store.next_id(conn, S.paths.c.path_id),
    }


def _write(conn, items: list[Item], run_id: int, ids: dict[str, int]) -> None:
    """Insert the rows of ``items`` (inside the caller's transaction) and advance
    ``ids``, the next free ids. A failed write ends the ingest, so ids need no
    rolling back."""
    tables = rows.build(items, run_id, ids, _now())
    for name in TABLES:
        store.insert_arrow(conn, name, tables[name])
    ids["prompt_id"] += tables["prompts"].num_rows
    ids["trace_id"] += tables["traces"].num_rows
    ids["path_id"] += tables["paths"].num_rows


def run_counts(conn, run_id: int) -> dict[str, int]:
    """Rows per table that belong to one run."""
    q = {
        "prompts": "SELECT count(*) FROM prompts WHERE run_id = :r",
        "roles": "SELECT count(*) FROM roles JOIN prompts USING (prompt_id) WHERE run_id = :r",
        "traces": "SELECT count(*) FROM traces JOIN prompts USING (prompt_id) WHERE run_id = :r",
        "tokens": "SELECT count(*) FROM tokens JOIN prompts USING (prompt_id) WHERE run_id = :r",
    }
    for t in ("token_credits", "component_flows", "edges", "paths"):
        q[t] = (
            f"SELECT count(*) FROM {t} JOIN traces USING (trace_id) "
            "JOIN prompts USING (prompt_id) WHERE run_id = :r"
        )
    q["path_hops"] = (
        "SELECT count(*) FROM path_hops JOIN paths USING (path_id) JOIN traces "
        "USING (trace_id) JOIN prompts USING (prompt_id) WHERE run_id = :r"
    )
    return {t: int(conn.execute(sa.text(sql), {"r": run_id}).scalar()) for t, sql in q.items()}


# ------------------------------------------------------------------ the ingest


def check_arguments(preset, overrides, edge_min_frac, batch_size, roots) -> dict:
    """The run's config from the preset, overrides and flags, every value typed and
    range-checked, and the roots' shape: all that needs no model (the CLI calls
    this before loading one)."""
    from unpack.config import check_field, make_config

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size {batch_size!r} must be a positive integer")
    extra = dict(overrides or {})
    if "preset" in extra:
        raise InputError("the preset is not a --set field; use --preset NAME")
    if edge_min_frac is not None:
        try:
            extra["edge_min_frac"] = check_field("edge_min_frac", edge_min_frac)
        except InputError:
            raise InputError(
                f"--edge-min-frac {edge_min_frac} must be a finite number >= 0, "
                "e.g. --edge-min-frac 1e-3"
            ) from None
    split_roots(roots)
    return make_config(preset, **{"position_edges": True, **extra}).to_dict()


MIN_BATCH_CAP = 64  # prompts per batch that cap_batch always allows


def cap_batch(backend, records, batch_size: int) -> int:
    """``batch_size``, or the planner's batch for the longest prompt (the most
    :func:`unpack.cost.batch_sizes` traces at once, at least :data:`MIN_BATCH_CAP`)
    when it asks for more, with a notice: a batch's results stay in memory until
    it commits, so a larger one costs memory and saves nothing (docs/RELIABILITY.md)."""
    tracer = getattr(backend, "tracer", None)
    cap = MIN_BATCH_CAP
    if batch_size <= cap:
        return batch_size
    if tracer is not None and records:
        from unpack.cost import batch_sizes, shape_of
        from unpack.tokens import encode

        n = len(encode(tracer.tokenizer, max(records, key=lambda r: len(r.text)).text)[0])
        want = min(batch_size, 1 << 16)
        cap = max(cap, batch_sizes(shape_of(tracer.spec), [n] * want, want)[0])
    if batch_size > cap:
        print(
            f"unpack ingest: notice: --batch-size {batch_size} capped at {cap} prompts per "
            "batch (what the planner traces at once for the longest prompt): a batch is held "
            "in memory until it commits, so more costs memory and is not faster",
            file=sys.stderr,
            flush=True,
        )
    return min(batch_size, cap)


class TracingBackend:
    """Where :func:`ingest` has its batches traced: ``names`` (the components),
    ``model_info()``, ``traced(batches, config, batch_size)``. A :class:`unpack.Tracer`
    given to :func:`ingest` is wrapped in :class:`LocalTracing`; ``ingest.shard.RayTracing``
    traces on Ray workers (and checks lengths there: ``check_fits``)."""

    names: list


class LocalTracing(TracingBackend):
    """Tracing in this process: batches are traced one after the other with
    ``tracer``. (``ingest.shard.RayTracing`` is the same interface over Ray workers.)

    ``tick(k)``, when set, is told of every ``k`` prompts traced within a batch
    (but for its last piece, counted when the batch is stored): a batch is traced
    in pieces that take about ``piece_s`` seconds each (one prompt at first, then
    as many as that time allows), so a progress bar moves per prompt on a large
    model while a small model keeps whole batches. The numbers do not depend on
    the pieces (prompts traced together or alone agree to float rounding)."""

    piece_s = 1.0

    def __init__(self, tracer):
        self.tracer = tracer
        self.names = list(tracer.comps.names)
        self.tick = None

    def model_info(self) -> dict:
        from unpack.loading import model_info

        return model_info(self.tracer.model, getattr(self.tracer, "spec", None))

    def traced(self, batches, config: dict, batch_size: int):
        """Each batch of items, traced (``trace_items``), as it is done."""
        per_prompt = None  # seconds, from the last piece
        for batch in batches:
            if self.tick is None:
                trace_items(self.tracer, batch, config, batch_size)
                yield batch
                continue
            i = 0
            while i < len(batch):
                k = 1 if per_prompt is None else max(1, int(self.piece_s / max(per_prompt, 1e-9)))
                piece = batch[i : i + k]
                t0 = time.perf_counter()
                trace_items(self.tracer, piece, config, batch_size)
                per_prompt = (time.perf_counter() - t0) / len(piece)
                i += len(piece)
                if i < len(batch):  # the last piece counts once the batch is stored
                    self.tick(len(piece))
            yield batch


def ingest(
    records,
    *,
    tracer,
    model_name: str,
    db=store.DEFAULT_DB,
    preset: str = "kqv_aligned",
    roots=(),
    batch_size: int = 8,
    edge_min_frac: float | None = None,
    overrides: dict | None = None,
    errors=(),
    progress: bool = True,
    model_info: dict | None = None,
    overall=None,
    method: str = "unpack",
    method_params: dict | None = None,
) -> Summary:
    """Trace ``records`` with ``tracer`` and store everything in ``db``.

    ``tracer``: a :class:`unpack.Tracer`, or a :class:`TracingBackend` such as
    ``ingest.shard.RayTracing`` (Ray workers; results still come back to this
    process, the one writer). ``errors``: rejected corpus rows (file, line,
    reason), stored as failed prompts. ``roots``: root specs (see
    :func:`parse_roots`), traced for every prompt besides the target.
    Position-resolved edges are kept above ``edge_min_frac`` of Σ|seeds| (the
    config default unless given). ``overall``: a progress bar over several
    models, advanced with this one. The file is held only while a batch commits
    (an app may read it in between); a second ingest into it is refused. A
    problem of the database file is a :class:`ingest.store.StoreError` (batches
    already committed stay). ``method``: ``unpack`` or a baseline
    (unpack/baselines; ``tracer`` a ``BaselineTracer``) with ``method_params``.

    The arguments are checked (:func:`run_config`) and the writer lock taken here,
    then :func:`ingest_checked` does the work."""
    config = run_config(preset, overrides, edge_min_frac, batch_size, roots, method, method_params)
    with _store_errors(db), store.writer_lock(db):
        return ingest_checked(
            records,
            config,
            tracer=tracer,
            model_name=model_name,
            db=db,
            roots=roots,
            batch_size=batch_size,
            errors=errors,
            progress=progress,
            model_info=model_info,
            overall=overall,
        )


def run_config(
    preset,
    overrides,
    edge_min_frac,
    batch_size,
    roots,
    method: str = "unpack",
    method_params: dict | None = None,
) -> dict:
    """The run's config: :func:`check_arguments` for the method's own runs, a
    baseline's ``method_config`` (its preset is the method's name) for the others."""
    if method == "unpack":
        return check_arguments(preset, overrides, edge_min_frac, batch_size, roots)
    from unpack.baselines.tracer import method_config

    return method_config(method, method_params)


def ingest_checked(
    records,
    config: dict,
    *,
    tracer,
    model_name: str,
    db,
    roots=(),
    batch_size: int = 8,
    errors=(),
    progress: bool = True,
    model_info: dict | None = None,
    overall=None,
) -> Summary:
    """:func:`ingest` once its arguments are checked into ``config`` (:func:`run_config`)
    and this process holds ``store.writer_lock(db)``: the ingest command checks and
    locks once, before it loads a model, and calls this for each model."""
    backend = tracer if isinstance(tracer, TracingBackend) else LocalTracing(tracer)
    batch_size = cap_batch(backend, records, batch_size)
    root_list = parse_roots(roots, backend.names)
    if model_info is None:
        model_info = backend.model_info()
    with _store_errors(db):
        summary = _ingest_into(
            db,
            records,
            errors,
            backend,
            model_name,
            config["preset"],
            config,
            root_list,
            batch_size,
            model_info,
            progress,
            overall,
        )
    summary.db_bytes = store.file_bytes(db)
    return summary


@contextlib.contextmanager
def _store_errors(db):
    """A problem of the file (full disk, read-only, corrupt) raised as the
    :class:`ingest.store.StoreError` that says so; anything else as it is."""
    try:
        yield
    except Exception as e:
        store_side = isinstance(e, (sa.exc.DBAPIError, OSError)) or type(e).__module__.startswith(
            "duckdb"
        )
        mapped = store.store_error(db, e) if store_side else None
        if mapped is None:
            raise
        raise mapped from None


def _ingest_into(
    db,
    records,
    errors,
    backend,
    model_name,
    preset,
    config,
    root_list,
    batch_size,
    model_info,
    progress,
    overall,
) -> Summary:
    engine = store.connect(db, short=True)  # each transaction opens and closes the file
    try:
        with store.transaction(engine, db) as conn:
            run_id = _run_id(conn, _model_id(conn, model_name, model_info), config)
            stored = _stored(conn, run_id)
            ids = _first_ids(conn)  # this process is the only writer (store.writer_lock)
        summary = Summary(db=str(db), model=model_name, preset=preset, run_id=run_id)
        todo = _plan(records, errors, root_list, stored, summary, backend.names)
        _warn_missing_roles(records, root_list, summary)
        if overall is not None:
            overall.update(summary.n_skipped + summary.n_duplicates)

        bad = [it for it in todo if it.error]  # rejected corpus rows: no tracing needed
        if bad:
            _commit(engine, db, bad, run_id, ids, summary, overall)
        todo = [it for it in todo if not it.error]
        _trace_and_commit(
            engine, db, todo, backend, config, batch_size, run_id, ids, summary, progress, overall
        )
        with store.transaction(engine, db) as conn:
            conn.execute(
                S.runs.update()
                .where(S.runs.c.run_id == run_id)
                .values(status="done", updated_at=_now(), finished_at=_now())
            )
            summary.rows = run_counts(conn, run_id)
            summary.db_prompts = conn.execute(
                sa.select(sa.func.count()).select_from(S.prompts)
            ).scalar()
        # Fold the write-ahead log into the file now: DuckDB's own checkpoint at
        # close hides its errors (a full disk would go unreported).
        with store.retry_locked(engine.connect, db) as conn:
            conn.exec_driver_sql("CHECKPOINT")
    finally:
        engine.dispose()
    return summary


def _commit(engine, db, items, run_id, ids, summary, overall=None) -> None:
    """Write ``items`` in one transaction (the file is open only meanwhile)."""
    t0 = time.perf_counter()
    with store.transaction(engine, db) as conn:
        _write(conn, items, run_id, ids)
    summary.write_s += time.perf_counter() - t0
    _count(summary, items)
    if overall is not None:
        overall.update(len(items))


def _trace_and_commit(
    engine, db, todo, backend, config, batch_size, run_id, ids, summary, progress, overall
) -> None:
    """Trace ``todo`` batch by batch (in this process or on workers) and commit each
    batch as it comes back, in whatever order."""
    from tqdm.auto import tqdm

    # mininterval 0: every prompt is drawn (a piece of a batch takes about a second)
    bar = _PromptBar(
        tqdm(
            total=len(todo),
            unit="prompt",
            desc=f"ingest {summary.model}",
            disable=not progress,
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0,
            position=0 if overall is None else 1,
            leave=overall is None,
        )
    )
    batches = [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)]
    if isinstance(backend, LocalTracing) and progress:
        backend.tick = bar.tick
    try:
        results = backend.traced(batches, config, batch_size)
        while True:
            t0 = time.perf_counter()
            batch = next(results, None)
            summary.trace_s += time.perf_counter() - t0
            if batch is None:
                break
            _commit(engine, db, batch, run_id, ids, summary, overall)
            bar.batch_done(len(batch), summary.n_failed)
    finally:
        bar.bar.close()
        if isinstance(backend, LocalTracing):
            backend.tick = None


class _PromptBar:
    """The ingest's progress bar in prompts: moved by the tracing backend's
    ``tick`` within a batch where it has one, and by the rest of a batch once
    it is committed."""

    def __init__(self, bar):
        self.bar, self.ticked = bar, 0

    def tick(self, k: int) -> None:
        self.ticked += k
        self.bar.update(k)

    def batch_done(self, n: int, n_failed: int) -> None:
        self.bar.set_postfix(failed=n_failed, refresh=False)
        self.bar.update(n - self.ticked)
        self.ticked = 0


def _stored(conn, run_id: int) -> dict[str, tuple[int, str, set]]:
    """``prompt_key -> (prompt_id, status, roots traced)`` for the prompts of a run."""
    out: dict[str, tuple[int, str, set]] = {}
    q = sa.text(
        "SELECT p.prompt_key, p.prompt_id, p.status, t.root FROM prompts p "
        "LEFT JOIN traces t USING (prompt_id) WHERE p.run_id = :r"
    )
    for key, pid, status, root in conn.execute(q, {"r": run_id}):
        out.setdefault(key, (pid, status, set()))[2].add(root)
    return out


def _plan(
    records, errors, root_list, stored: dict, summary: Summary, names: list[str] = ()
) -> list[Item]:
    """Items still to do, in input order: rejected corpus rows first, then records
    (new prompts, and stored prompts that lack some of the requested roots)."""
    todo, seen, n_rejected = [], set(), 0
    for e in errors or ():
        file, line, reason = (
            getattr(e, "file", None),
            getattr(e, "line", None),
            getattr(e, "reason", str(e)),
        )
        key = hashlib.sha1(json.dumps(["rejected", str(file), line]).encode()).hexdigest()[:20]
        summary.n_input += 1
        if key in stored or key in seen:
            summary.n_skipped += key in stored
            summary.n_duplicates += key not in stored
            continue
        seen.add(key)
        # after the rows that loaded, in file order; the text is the row's (or its line)
        # the error names the file and line too, so a plain query of the errors finds the row
        todo.append(
            Item(
                seq=len(records) + n_rejected,
                key=key,
                record=None,
                error=f"{file}:{line}: {reason}" if file is not None else str(reason),
                label=f"{file}:{line}",
                fields={
                    "task": "corpus",
                    "text": getattr(e, "text", None),
                    "metadata": json.dumps({"file": str(file), "line": line}),
                },
            )
        )
        n_rejected += 1
    for seq, rec in enumerate(records):
        summary.n_input += 1
        key = prompt_key(rec)
        if key in seen:
            summary.n_duplicates += 1
            continue
        seen.add(key)
        roots, warnings = resolve_roots(rec, root_list)
        error = None
        if getattr(rec, "root", None):  # the record's own root (a corpus column)
            try:
                extra, more = resolve_roots(rec, parse_roots([rec.root], names))
            except InputError as e:  # its message names the root already
                error = str(e) if str(e).startswith("root ") else f"root {rec.root!r}: {e}"
            else:
                if more:
                    error = "; ".join(more)
                roots += [r for r in extra[1:] if r.spec not in {x.spec for x in roots}]
        if error is not None:
            if key not in stored:
                todo.append(Item(seq=seq, key=key, record=rec, error=error, label=_label(seq, rec)))
            else:
                summary.n_skipped += 1
            continue
        prompt_id = None
        if key in stored:
            prompt_id, status, have = stored[key]
            roots = [r for r in roots if r.spec not in have]
            if status != "ok" or not roots:
                summary.n_skipped += 1
                continue
        todo.append(
            Item(
                seq=seq,
                key=key,
                record=rec,
                roots=roots,
                warnings=warnings,
                label=_label(seq, rec),
                prompt_id=prompt_id,
            )
        )
    return todo


def _label(seq: int, rec) -> str:
    """How messages name a prompt: its corpus file and line, else its ``seq``
    (the prompts column, 0-based), with the start of its text."""
    where = getattr(rec, "where", None) or f"prompt seq {seq}"
    return f"{where} {rec.text[:50]!r}"


def _warn_missing_roles(records, root_list, summary: Summary) -> None:
    """A --roots role that no prompt has traces nothing: say so, with the roles
    the prompts do have."""
    import sys

    have = sorted({r for rec in records for r in (rec.roles or {})})
    missing = sorted({w for _, w in root_list if not re.fullmatch(r"-?\d+", w) and w not in have})
    for w in missing:
        specs = sorted({f"{c}@{w}" for c, ww in root_list if ww == w})
        shown = ", ".join(specs[:3]) + (f" and {len(specs) - 3} more" if len(specs) > 3 else "")
        msg = (
            f"--roots {shown}: no prompt has the role {w!r}, so nothing is traced from it; "
            f"the prompts' roles are {', '.join(have) or '(none)'}"
        )
        summary.warnings.append(msg)
        print(f"unpack ingest: warning: {msg}", file=sys.stderr, flush=True)


def _count(summary: Summary, items: list[Item]) -> None:
    for it in items:
        if it.error:
            summary.n_failed += 1
            if len(summary.errors) < 5:
                summary.errors.append((it.label, it.error.removeprefix(f"{it.label}: ")))
        else:
            summary.n_ok += 1


def check_lengths(tracer, lengths: list[int], n_traces: int) -> None:
    """``unpack.plan.check_fits`` for the longest prompt that fits the model's
    context (longer ones fail alone, as bad prompts)."""
    from unpack.plan import check_fits

    ctx = tracer.spec.max_positions or 1 << 30
    lengths = [n for n in lengths if n <= ctx]
    if lengths:
        check_fits(tracer, max(lengths), n_traces)
