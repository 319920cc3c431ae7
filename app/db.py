"""Read-only access to a store: the one way the app, graphs and reports open it.

The connection (``ingest.store.open_read_only``, here ``open_db``) is read-only
and DuckDB's external access is off, so nothing that runs through it (the app's
SQL box included) can write, attach another file, install extensions or read the
file system. This module adds what the app needs on top: the SQL box's checks and
limits and the short-lived connections an ingest can commit between.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import duckdb

from unpack.errors import InputError

from ingest.store import SAFE_CONFIG, check_schema, open_read  # noqa: F401 (app.db's names)
from ingest.store import open_read_only as open_db  # noqa: F401


# What the SQL box runs: statements whose type DuckDB's own parser reports as one
# of these (DESCRIBE, SHOW, SUMMARIZE, FROM ..., VALUES, TABLE parse as SELECT;
# PIVOT as MULTI). The connection is read-only underneath either way.
_ALLOWED_TYPES = ("SELECT", "EXPLAIN")
_ALLOWED_MULTI = ("pivot", "unpivot")
_HINT = "SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN only"

DEFAULT_TIMEOUT_S = 10.0  # per query; `unpack app --sql-timeout`
DEFAULT_MAX_MB = 32.0  # result size; `unpack app --sql-max-mb`
DEFAULT_MEMORY_MB = 2048  # DuckDB's memory for all the app's queries; `unpack app --sql-memory-mb`
DEFAULT_THREADS = min(4, os.cpu_count() or 1)  # DuckDB's threads; `unpack app --sql-threads`

# Functions that would show the store's absolute path (or the home directory) in
# their rows: the SQL box refuses them; ``query``/``query_table`` would run any of
# them from a string. Paths in error messages are hidden (:func:`hide_paths`).
_PATH_FUNCTIONS = (
    "duckdb_databases",
    "pragma_database_list",
    "database_list",
    "duckdb_settings",
    "duckdb_extensions",
    "duckdb_secrets",
    "duckdb_temporary_files",
)
_PATH_CALLS = (
    "current_setting",
    "which_secret",
    "query",
    "query_table",
    "getvariable",
    "json_execute_serialized_sql",
)  # refused when called: NAME(


def app_limits() -> dict:
    """DuckDB's ``memory_limit`` and ``threads`` for the app's connections, from
    $UNPACK_SQL_MEMORY_MB and $UNPACK_SQL_THREADS (set by ``unpack app
    --sql-memory-mb/--sql-threads``; defaults :data:`DEFAULT_MEMORY_MB`,
    :data:`DEFAULT_THREADS`). One DuckDB instance serves every session, so the
    memory limit bounds all queries together (docs/SECURITY.md)."""

    def num(name, default, cast):
        try:
            v = cast(float(os.environ.get(name, default)))
        except (ValueError, OverflowError):
            return default
        return v if v >= 1 else default

    return {
        "memory_limit": f"{num('UNPACK_SQL_MEMORY_MB', DEFAULT_MEMORY_MB, int)}MiB",
        "threads": num("UNPACK_SQL_THREADS", DEFAULT_THREADS, int),
    }


def check_no_path_functions(body: str) -> None:
    """Refuse a statement that names one of :data:`_PATH_FUNCTIONS` (found with
    DuckDB's tokenizer, so a name inside a string literal is left alone)."""
    toks = duckdb.tokenize(body)
    offs = [off for off, _ in toks] + [len(body)]
    words = [body[a:b].strip() for a, b in zip(offs, offs[1:])]
    for i, ((_, kind), word) in enumerate(zip(toks, words)):
        if getattr(kind, "name", str(kind)) not in ("identifier", "keyword"):
            continue
        name = word.strip('"').lower()
        called = i + 1 < len(words) and words[i + 1].startswith("(")
        if name in _PATH_FUNCTIONS or (name in _PATH_CALLS and called):
            raise InputError(
                f"{name} is not allowed in the SQL box: it can show paths of the "
                "machine the app runs on; query the store's tables and views "
                "(see 'Tables and views' below)"
            )


def hide_paths(text: str, path) -> str:
    """``text`` with the store's absolute path, its folder and the home folder
    written as ``<store>``, ``<store folder>`` and ``~``."""
    if path is None:
        return text
    p = Path(path).resolve()
    for full, short in (
        (str(p), "<store>"),
        (str(p.parent), "<store folder>"),
        (str(Path.home()), "~"),
    ):
        if len(full) > 1:
            text = text.replace(full, short)
    return text


class QueryLimitError(InputError):
    """A query ran past the time limit or its result past the size limit."""


def _first_word(stmt: str) -> str:
    body = re.sub(r"^\s*((--[^\n]*(\n|$))|(/\*.*?\*/)|\s)*", "", stmt, flags=re.S)
    m = re.match(r"[A-Za-z_]+", body)
    return m.group(0) if m else body[:1]


def check_readonly_sql(sql: str) -> str:
    """The one read statement in ``sql`` (its text), or an InputError that says why
    not. DuckDB's parser splits the statements, so a ';' inside a string or a
    comment is not a separator, and a typo is a syntax error, not a refusal.

    The database enforces read-only too (read-only, no external access, locked
    settings); this check gives the clear message first."""
    text = sql or ""
    try:
        stmts = [
            st for st in duckdb.extract_statements(text) if st.query.strip().rstrip(";").strip()
        ]
    except duckdb.Error as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        msg = lines[0].replace("Parser Error: ", "")
        where = f" ({lines[1].strip()})" if len(lines) > 1 and lines[1].startswith("LINE") else ""
        raise InputError(
            f"the query is not valid SQL: {msg}{where}; check the spelling, e.g. "
            "SELECT * FROM prompts LIMIT 10"
        ) from None
    if not stmts:
        raise InputError("the query is empty: write a SELECT")
    if len(stmts) > 1:
        raise InputError(
            f"one statement at a time: this has {len(stmts)}; remove the ';' between statements"
        )
    st = stmts[0]
    kind = st.type.name
    word = _first_word(st.query)
    if kind not in _ALLOWED_TYPES and not (kind == "MULTI" and word.lower() in _ALLOWED_MULTI):
        label = kind.split("_")[0] if word.upper() in ("WITH", "(", "") else word.upper()
        raise InputError(f"{label} is not allowed here: this SQL box is read-only ({_HINT})")
    return _without_terminator(st.query)


def _without_terminator(stmt: str) -> str:
    """The statement without its closing ';' (and the comments after it), found
    with DuckDB's tokenizer so a ';' in a string or a comment is left alone."""
    toks = [
        (off, kind.name if hasattr(kind, "name") else str(kind))
        for off, kind in duckdb.tokenize(stmt)
    ]
    code = [(off, kind) for off, kind in toks if kind != "comment"]
    if code and code[-1][1] == "operator" and stmt[code[-1][0] :].lstrip().startswith(";"):
        stmt = stmt[: code[-1][0]]
    return stmt.strip()


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def run_query(
    con,
    sql: str,
    limit: int | None = 10_000,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    max_bytes: int | None = int(DEFAULT_MAX_MB * 2**20),
):
    """A read query's result as a DataFrame: at most ``limit`` rows (one more is
    fetched, so ``df.attrs["truncated"]`` says whether rows were left out), at most
    ``max_bytes`` of result (else :class:`QueryLimitError`), and stopped after
    ``timeout_s`` seconds (DuckDB interrupts the query; :class:`QueryLimitError`).

    The query runs on its own cursor of ``con``, so a slow one holds up no other
    session. Rows stream in small batches: a result past the size limit is never
    held whole. Paths of the machine stay out of it: functions that show them
    are refused (:func:`check_no_path_functions`) and messages hide them
    (:func:`hide_paths`); the rows are the store's own, unchanged."""
    body = check_readonly_sql(sql)
    check_no_path_functions(body)
    path = getattr(con, "path", None)
    cur = con.cursor()
    timed_out = threading.Event()

    def stop():
        timed_out.set()
        cur.interrupt()

    timer = threading.Timer(timeout_s, stop) if timeout_s else None
    t0 = time.perf_counter()
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        table, n_bytes = _fetch(cur, body, limit, max_bytes)
    except duckdb.Error as e:
        err = _query_error(e, timed_out.is_set(), timeout_s)
        raise type(err)(hide_paths(str(err), path)) from None
    finally:
        if timer is not None:
            timer.cancel()
        cur.close()
    truncated = limit is not None and table.num_rows > limit
    if truncated:
        table = table.slice(0, limit)
    df = table.to_pandas()
    df.attrs.update(truncated=truncated, bytes=int(n_bytes), seconds=time.perf_counter() - t0)
    return df


def _fetch(cur, body: str, limit: int | None, max_bytes: int | None):
    """``(arrow table, bytes read)``: the statement's rows in small batches, up to
    ``limit + 1`` rows, refused once past ``max_bytes``."""
    import pyarrow as pa

    rel = cur.sql(body)
    if rel is None:
        raise InputError("the statement returned no rows")
    if limit is not None:
        rel = rel.limit(limit + 1)
    reader = rel.to_arrow_reader(64)
    batches, n_rows, n_bytes = [], 0, 0
    for batch in reader:
        batches.append(batch)
        n_rows += batch.num_rows
        n_bytes += batch.nbytes
        if max_bytes is not None and n_bytes > max_bytes:
            raise QueryLimitError(
                f"the result is larger than the size limit of {_mb(max_bytes)} (passed it "
                f"after {n_rows:,} rows): select fewer or narrower columns, add a LIMIT, or "
                "raise the limit with `unpack app --sql-max-mb`"
            )
        if limit is not None and n_rows > limit:
            break
    return pa.Table.from_batches(batches, schema=reader.schema), n_bytes


def _query_error(e: duckdb.Error, timed_out: bool, timeout_s) -> InputError:
    """The message of a failed query: past the time limit, refused as a write, or DuckDB's."""
    if timed_out:
        return QueryLimitError(
            f"the query ran past the time limit of {timeout_s:g} s and was stopped: narrow "
            "it (a WHERE, a LIMIT, fewer joins), or raise the limit with "
            "`unpack app --sql-timeout`"
        )
    msg = str(e).splitlines()[0]
    if isinstance(e, duckdb.OutOfMemoryException):
        return QueryLimitError(
            f"the query needs more memory than the SQL box's memory limit allows ({msg}): "
            "narrow it (a "
            "WHERE, a LIMIT, fewer or smaller aggregates), or raise the limit with "
            "`unpack app --sql-memory-mb`"
        )
    if any(
        k in msg.lower()
        for k in (
            "read-only",
            "read only",
            "external access",
            "permission",
            "lock_configuration",
            "locked",
        )
    ):
        return InputError(f"refused: {msg} (this connection is read-only and cannot reach files)")
    return InputError(f"query failed: {msg}")


class ResultCache:
    """Least-recently-used query results, bounded in bytes (not entries): one
    large result cannot keep gigabytes alive. Thread-safe; the lock is never held
    while a query runs."""

    def __init__(self, max_bytes: int):
        from collections import OrderedDict

        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[tuple, tuple[object, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key, value, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self._bytes -= n


class ShortLived:
    """The app's handle on a store, used like a DuckDB connection: each
    ``cursor()`` is one query's read-only connection, and the file is open only
    while some query runs, and :attr:`LINGER_S` after (queries at the same time,
    or one right after another, share one opening). So an ingest into the same
    file can commit between two pages' queries, and a query that meets a commit
    waits for it (``ingest.store.retry_locked``); every opening sees the rows
    committed before it. Close each cursor (the app's queries do, in
    ``finally``)."""

    LINGER_S = 0.3  # the file stays open this long after the last query: a page's
    #                 queries share one opening, and a commit waits at most this much more

    def __init__(self, path, limits: dict | None = None):
        self.path = str(path)
        self.limits = limits  # DuckDB settings of its connections (app_limits)
        self._con = None
        self._users = 0
        self._lock = threading.Lock()
        self._closing = None  # the timer that closes the file after LINGER_S

    def cursor(self) -> "_Cursor":
        with self._lock:
            if self._closing is not None:
                self._closing.cancel()
                self._closing = None
            if self._con is None:
                self._con = open_read(self.path, self.limits)
            self._users += 1
            try:
                cur = self._con.cursor()
            except BaseException:
                self._release_locked()
                raise
        return _Cursor(self, cur)

    def is_open(self) -> bool:
        """Does this process have the file open now (a query running)?"""
        return self._con is not None

    def _release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._closing = threading.Timer(self.LINGER_S, self._close_idle)
            self._closing.daemon = True
            self._closing.start()

    def _close_idle(self) -> None:
        with self._lock:
            if self._users == 0 and self._con is not None:
                con, self._con = self._con, None
                con.close()


class _Cursor:
    """A DuckDB cursor of a :class:`ShortLived` store; ``close()`` ends its hold on
    the file. Everything else is the DuckDB cursor's."""

    def __init__(self, owner: ShortLived, cur):
        self._owner, self._cur = owner, cur

    def __getattr__(self, name):
        if self._cur is None:
            raise duckdb.ConnectionException("this cursor is closed")
        return getattr(self._cur, name)

    def cursor(self) -> "_Cursor":
        return self._owner.cursor()

    def close(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None:
            try:
                cur.close()
            finally:
                self._owner._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # a cursor dropped without close() must not keep the file open
        try:
            self.close()
        except Exception:
            pass


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared_db(path) -> ShortLived:
    """The app's handle on the store at ``path``, one per file for the whole
    process: checked once with :func:`open_db` (schema, length), then read
    through short-lived connections (:class:`ShortLived`), so an ingest can
    write the file while the app shows it. Run each query on its own
    ``con.cursor()`` and close it."""
    key = str(Path(path).resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            open_db(key).close()
            _SHARED[key] = ShortLived(key, app_limits())
        return _SHARED[key]


def query_store(
    path,
    sql: str,
    limit: int | None = 10_000,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    max_bytes: int | None = int(DEFAULT_MAX_MB * 2**20),
):
    """:func:`run_query` on the app's handle on the store at ``path``
    (:func:`shared_db`): the SQL box's one way in."""
    return run_query(shared_db(path), sql, limit, timeout_s=timeout_s, max_bytes=max_bytes)


def db_version(path) -> tuple:
    """What changes when an ingest commits to ``path``: the size and time of the
    file and of its write-ahead log. The app's caches are keyed by it, so a
    refresh after a commit shows the new rows."""
    out = []
    for p in (str(path), f"{path}.wal"):
        try:
            st = Path(p).stat()
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out += [None, None]
    return tuple(out)
