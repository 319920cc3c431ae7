"""The store: opening a DuckDB file, for reading or writing, and writing to it.

The one module both sides use (docs/API.md, "Layers"): the checks of the file
and of its schema revision, the read-only connection the app and the reports
read through (:func:`open_read_only`), the writing engine (:func:`connect`),
transactions and the one-writer lock. ``connect(path)`` creates the file if
needed and upgrades it to the newest schema (Alembic, ``migrations/``). Small
statements go through SQLAlchemy Core; bulk rows go in as Arrow tables with one
``INSERT ... SELECT`` per table, on the same connection and inside the caller's
transaction.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from unpack.errors import InputError

DEFAULT_DB = "unpack.duckdb"


class StoreError(InputError):
    """The database file cannot be used as it is. The message names the file, what
    is wrong with it and the fix; the CLI prints it and exits with status 2, and
    nothing already stored is lost."""


_HEADER = 3 * 4096  # DuckDB's main header and its two database headers


def _describe(head: bytes) -> str:
    if head.startswith(b"SQLite format 3"):
        return "an SQLite database"
    if head.startswith(b"PAR1"):
        return "a Parquet file"
    if head[:2] == b"PK":
        return "a zip archive"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "some other binary format"


def check_store_path(path, for_writing: bool = True) -> None:
    """Checks on the file itself, before DuckDB or a model is involved: the
    folder exists, the file (if there is one) is a DuckDB file, not empty, and
    it can be written when ``for_writing``."""
    p = Path(path)
    name = str(p)
    if not p.parent.exists():
        raise InputError(
            f"database {name!r}: folder {str(p.parent)!r} does not exist; "
            "create it or pick another --db"
        )
    if p.is_dir():
        raise StoreError(f"database {name!r} is a folder, not a file; give a file path with --db")
    if p.exists():
        try:
            size = p.stat().st_size
            with open(p, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise StoreError(
                f"database {name!r} cannot be read ({e.strerror}); check its "
                "permissions or choose another --db"
            ) from None
        if size == 0:
            raise StoreError(
                f"database {name!r} is an empty file (0 bytes), not a DuckDB "
                "database: restore it from a backup, or delete it to start a new "
                "store there, or choose another --db"
            )
        if head[8:12] != b"DUCK":
            raise StoreError(
                f"database {name!r} is not a DuckDB database (the file holds "
                f"{_describe(head)}): choose another --db, or restore the store "
                "from a backup"
            )
    if for_writing:
        target = p if p.exists() else p.parent
        if not os.access(target, os.W_OK):
            ro = _read_only_fs(target)
            why = "is on a read-only file system" if ro else "is not writable (permissions)"
            raise StoreError(
                f"database {name!r} {why}: choose a writable path with --db"
                + ("" if ro else ", or fix the permissions")
            )


def check_store(path) -> None:
    """Everything about the store file that can be checked without a model: the
    path (:func:`check_store_path`), and for an existing file that DuckDB opens
    it, that it is not truncated, not held by another writer and not of a newer
    schema. The CLI runs this before loading a model."""
    import duckdb

    check_store_path(path, for_writing=True)
    p = Path(path)
    if not p.exists():
        return
    try:
        raw = retry_locked(
            lambda: duckdb.connect(
                str(p),
                read_only=True,
                config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
            ),
            p,
        )
        try:
            check_complete(raw, p)
            has = raw.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name = 'alembic_version'"
            ).fetchone()[0]
            rev = (
                raw.execute("SELECT max(version_num) FROM alembic_version").fetchone()[0]
                if has
                else None
            )
            refuse_newer(rev, p)
        finally:
            raw.close()
    except duckdb.Error as e:
        raise_mapped(p, e, opening=True)


def refuse_newer(rev, path) -> None:
    """A :class:`StoreError` when the file's schema revision ``rev`` comes from newer
    code than this (a revision this code's history does not know)."""
    import migrations

    if rev is not None and not migrations.known_revision(rev):
        raise StoreError(
            f"database {str(path)!r} has schema revision {rev}, newer than this "
            f"code (which knows up to {migrations.head_revision()}): upgrade the "
            "code (git pull, then bash .ci/setup), or use a store made by this "
            "version"
        )


SAFE_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def open_read(path, limits: dict | None = None):
    """A read-only DuckDB connection with external access off and its settings
    locked, waiting (:func:`retry_locked`) while an ingest commits a batch;
    ``limits``: more DuckDB settings (the app's ``app.db.app_limits``). Nothing
    that runs through it can write, attach another file, install extensions or
    read the file system."""
    import duckdb

    config = dict(SAFE_CONFIG, **(limits or {}))
    con = retry_locked(lambda: duckdb.connect(str(path), read_only=True, config=config), path)
    try:
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def open_read_only(path):
    """:func:`open_read` on the store at ``path``, with its schema checked against
    this code (:func:`check_schema`) and its length against its metadata (a
    truncated copy is refused here, not on every query). Problems of the file are
    a :class:`StoreError` (an InputError)."""
    import duckdb

    p = Path(path)
    if not p.exists():
        raise InputError(
            f"database {str(p)!r} does not exist; create it with "
            "`unpack demo` or `unpack ingest --model M --task ioi --db PATH`"
        )
    check_store_path(p, for_writing=False)
    try:
        con = open_read(p)
    except duckdb.Error as e:
        raise_mapped(p, e, opening=True)
    try:
        check_complete(con, p)
        check_schema(con, p)
    except duckdb.Error as e:
        con.close()
        raise_mapped(p, e)
    except Exception:
        con.close()
        raise
    return con


def check_schema(con, path) -> None:
    """The schema of a read-only DuckDB connection ``con`` is this code's head: a
    newer one needs newer code, an older one names the command that upgrades it."""
    import duckdb
    import migrations

    head = migrations.head_revision()
    try:
        rev = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except duckdb.Error:
        rev = None
    rev = rev[0] if rev else None
    refuse_newer(rev, path)
    if rev is None:
        raise InputError(
            f"database {str(path)!r} has no unpack schema (schema None, this code "
            f"needs {head}): it is not a store made by `unpack ingest`; create one "
            "with `unpack demo` or `unpack ingest --db PATH`"
        )
    if rev != head:
        raise InputError(
            f"database {str(path)!r} has schema {rev}, this code needs {head}; "
            f"upgrade it with `python -m migrations --db {str(path)} upgrade` "
            "(any `unpack ingest` into it upgrades it too)"
        )


def _read_only_fs(path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_complete(raw, path) -> None:
    """A checkpointed DuckDB file reaches past the last block its tables and
    metadata use; a shorter one was cut off (an interrupted copy or download).
    Reads only the metadata, not the rows."""
    p = Path(path)
    if Path(f"{p}.wal").exists():  # blocks of the log may not be in the file yet
        return
    block_size = int(raw.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0])
    last = raw.execute("SELECT max(block_id) FROM pragma_metadata_info()").fetchone()[0]
    last = -1 if last is None else int(last)
    for (table,) in raw.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
    ).fetchall():
        q = (
            "SELECT max(greatest(block_id, coalesce(list_max(additional_block_ids), -1))) "
            "FROM pragma_storage_info(?) WHERE persistent"
        )
        b = raw.execute(q, [table]).fetchone()[0]
        if b is not None:
            last = max(last, int(b))
    need, have = _HEADER + (last + 1) * block_size, p.stat().st_size
    if have < need:
        raise StoreError(
            f"database {str(p)!r} is truncated: it has {have:,} bytes, its "
            f"contents need {need:,} (an interrupted copy or download?); restore "
            "it from a backup or copy it again"
        )


def raise_mapped(path, exc: BaseException, opening: bool = False):
    """Raise the :class:`StoreError` that ``exc`` means for ``path``, or ``exc`` itself
    when it is not a store problem (call from an ``except`` block). ``opening``:
    ``exc`` came from opening the file, where any refusal of DuckDB's is the file's."""
    mapped = store_error(path, exc, opening)
    if mapped is not None:
        raise mapped from None
    raise exc


def store_error(path, exc, opening: bool = False) -> StoreError | None:
    """The :class:`StoreError` for a failure of DuckDB or the OS on ``path``, or
    None when it is not a problem of the file (then it is a bug: keep the traceback).
    The one place where store errors get their message and fix: every command that
    opens a store maps its errors here. ``opening``: ``exc`` came from opening the
    file, so a DuckDB error of a kind not named here is still the file's problem."""
    import errno

    orig = getattr(exc, "orig", None) or exc
    text = str(orig)
    low = text.lower()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(orig).__name__]
    keys = (
        "no space left",
        "read-only file system",
        "permission denied",
        "lock",
        "corrupt",
        "checksum",
        "could not read enough bytes",
        "not a valid duckdb",
    )
    msg = next((ln for ln in lines if any(k in ln.lower() for k in keys)), lines[0])
    msg = msg.replace('Original error: "', "").rstrip('"')
    name = str(path)
    code = getattr(orig, "errno", None)
    if code == errno.ENOSPC or "no space left" in low or "disk is full" in low:
        return StoreError(
            f"database {name!r}: the disk is full ({msg}); free some space (or "
            "choose another --db) and run the same command again: the prompts "
            "stored so far are kept and the rest are added"
        )
    if code == errno.EROFS or "read-only file system" in low:
        return StoreError(
            f"database {name!r} is on a read-only file system ({msg}); choose "
            "a writable path with --db"
        )
    if code in (errno.EACCES, errno.EPERM) or "permission denied" in low:
        return StoreError(
            f"database {name!r} cannot be written ({msg}); fix its permissions "
            "or choose another --db"
        )
    if "replaying wal" in low or "wal does not match" in low or "checkpoint iteration" in low:
        return _wal_error(name, low, msg)
    if "conflicting lock" in low or ("lock" in low and "could not set lock" in low):
        return StoreError(
            f"database {name!r} is open in another process (DuckDB allows one "
            "writer); wait for it to finish or use another --db"
        )
    if "not a valid duckdb database" in low:
        return StoreError(
            f"database {name!r} is not a DuckDB database ({msg}); choose another "
            "--db, or restore the store from a backup"
        )
    if "could not read enough bytes" in low or "truncated" in low:
        return StoreError(
            f"database {name!r} is truncated ({msg}); restore it from a backup or copy it again"
        )
    if "corrupt" in low or "checksum" in low:
        return StoreError(
            f"database {name!r} is corrupt ({msg}); restore it from a backup "
            "(a rerun cannot repair it)"
        )
    if "version number" in low or "storage version" in low or "serialization" in low:
        return StoreError(
            f"database {name!r} was written by another DuckDB version ({msg}); "
            "open it with the DuckDB version that wrote it, or export and import"
        )
    if opening and _from_store(exc):
        return StoreError(
            f"database {name!r} cannot be opened ({msg}); check that it is a store "
            "made by `unpack ingest` and that nothing else is changing it, or "
            "restore it from a backup"
        )
    return None


def _wal_error(name: str, low: str, msg: str) -> StoreError:
    """The file's write-ahead log (``FILE.wal``) cannot be replayed into it. Its
    changes are not lost as long as the log is kept, so the fix moves it aside
    and never deletes it."""
    wal = f"{name}.wal"
    if "checkpoint iteration" in low:
        what = (
            "the log comes from a later checkpoint than the file: the file was replaced "
            "by an older copy, e.g. restored from a backup, while its log stayed"
        )
    elif "does not match" in low:
        what = "the log belongs to another database file"
    else:
        what = f"the log cannot be replayed ({msg})"
    return StoreError(
        f"database {name!r} does not open: its write-ahead log {wal!r} does not match it "
        f"({what}). If the file was restored from a backup on purpose, move the stale log "
        f"aside (mv {wal} {wal}.stale) and run the command again: the store opens as the "
        "backup holds it, without the log's changes. Otherwise put back the database file "
        "that goes with the log. Nothing was changed or deleted"
    )


def _from_store(exc) -> bool:
    """Was ``exc`` raised by DuckDB (directly or through SQLAlchemy) or the OS?"""
    orig = getattr(exc, "orig", None) or exc
    return isinstance(orig, OSError) or type(orig).__module__.split(".")[0] in ("duckdb", "_duckdb")


def stored_revision(conn) -> str | None:
    """The Alembic revision recorded in the file (None: no schema yet)."""
    has = conn.execute(
        sa.text(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'alembic_version'"
        )
    ).scalar()
    if not has:
        return None
    return conn.execute(sa.text("SELECT max(version_num) FROM alembic_version")).scalar()


def _check_revision(conn, path, read_only: bool) -> None:
    """A schema this code knows: older ones are upgraded (writing) or named with
    the command that upgrades them (read-only); newer ones need newer code."""
    import migrations

    rev, head = stored_revision(conn), migrations.head_revision()
    refuse_newer(rev, path)
    if read_only and rev != head:
        raise InputError(
            f"database {str(path)!r} has schema {rev}, this code needs {head}; "
            f"upgrade it with `python -m migrations --db {str(path)} upgrade` (any "
            "`unpack ingest` into it upgrades it too)"
        )


def connect(path=DEFAULT_DB, read_only: bool = False, short: bool = False) -> sa.Engine:
    """An engine on the DuckDB file ``path``; unless read-only, the schema is
    upgraded to head first. One writing process per file (DuckDB locks it).
    Every problem of the file is a :class:`StoreError` that names it and the fix.

    ``short``: no connection pool, so the file is open only while a connection
    from ``engine.connect()`` is (see :func:`transaction`); the app can read the
    file between two of them."""
    import migrations

    path = Path(path)
    if read_only and not path.exists():
        raise InputError(f"database {str(path)!r} does not exist; create it with `unpack ingest`")
    check_store_path(path, for_writing=not read_only)
    existed = path.exists()
    engine = sa.create_engine(
        f"duckdb:///{path}",
        connect_args={"read_only": read_only},
        **({"poolclass": sa.pool.NullPool} if short else {}),
    )
    if short and not read_only:
        sa.event.listen(engine, "connect", _no_checkpoint_on_close)
    try:
        with retry_locked(engine.connect, path) as conn, conn.begin():
            if existed:
                check_complete(conn.connection.driver_connection, path)
            _check_revision(conn, path, read_only)
            if not read_only:
                migrations.upgrade(conn)
    except Exception as e:
        engine.dispose()
        if isinstance(e, InputError):
            raise
        raise_mapped(path, e, opening=True)
    return engine


def _no_checkpoint_on_close(dbapi_conn, _record) -> None:
    """A short connection leaves its commits in the write-ahead log when it closes,
    as a connection kept open would; DuckDB folds the log into the file once it
    passes :data:`WAL_LIMIT` and the ingest checkpoints at its end. (A checkpoint
    at every close rewrites blocks for every batch and grows the file in 256 KiB
    steps; a longer log costs every opening more to read back, about 50 ms per
    4 MiB here.)"""
    dbapi_conn.execute("PRAGMA disable_checkpoint_on_shutdown")
    dbapi_conn.execute(f"SET checkpoint_threshold = '{WAL_LIMIT}'")


# ------------------------------------------------------------------ sharing the file

WAL_LIMIT = "4MiB"  # the write-ahead log an ingest leaves between checkpoints
LOCK_WAIT_S = 120.0  # how long a connection waits for another process's short hold


def is_lock_conflict(exc: BaseException) -> bool:
    """Did DuckDB refuse to open the file because another process holds it?"""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def retry_locked(open_fn, path, wait_s: float | None = None):
    """``open_fn()``, tried again while another process holds the file (an app
    reading it, an ingest committing a batch: both hold it for moments). After
    ``wait_s`` (default :data:`LOCK_WAIT_S`, or ``$UNPACK_LOCK_WAIT``) the last
    refusal is raised."""
    if wait_s is None:
        wait_s = float(os.environ.get("UNPACK_LOCK_WAIT", LOCK_WAIT_S))
    deadline, delay = time.monotonic() + wait_s, 0.01
    while True:
        try:
            return open_fn()
        except Exception as e:
            if not is_lock_conflict(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.25)


@contextmanager
def transaction(engine: sa.Engine, path):
    """One write, as short as it can be: open the file (waiting while a reader
    holds it), run the caller's statements in one transaction, commit, close.
    ``engine`` comes from ``connect(path, short=True)``."""
    conn = retry_locked(engine.connect, path)
    try:
        with conn.begin():
            yield conn
    finally:
        conn.close()


_HELD: dict[tuple, list] = {}  # (device, inode) -> [held lock files, holders, created here]
_HELD_LOCK = threading.Lock()


@contextmanager
def writer_lock(path):
    """The one-ingest-per-file rule, held for a whole ingest, whatever name the
    file is reached by: exclusive ``flock`` locks on ``REALPATH.ingest.lock`` (a
    symlink resolves to the same name) and on a lock file named by the file's
    device and inode in :func:`lock_dir` (a hard link has the same inode). The
    kernel drops them when the process dies, so a killed ingest never blocks
    the next one; both files are removed on release. Re-entrant in one process.
    A missing store is created (empty) here, so that it has an inode to lock,
    and removed again if the ingest ends with an error before anything is in
    it. DuckDB's own lock is held only while a batch commits, so an app can
    read the file meanwhile; this lock keeps a second ingest out."""
    check_store_path(path, for_writing=True)  # the folder exists and can be written
    real = os.path.realpath(path)
    with _HELD_LOCK:
        key = _identity(real)
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            key = _acquire(path, real)
    ok = False
    try:
        yield
        ok = True
    finally:
        with _HELD_LOCK:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                locks, _, created = _HELD.pop(key)
                if created and not ok:
                    _drop_if_blank(real)
                for name, fd in reversed(locks):
                    _unlock(name, fd)


def lock_dir() -> str:
    """Where the locks named by a file's identity live (one folder per machine)."""
    import tempfile

    d = os.path.join(tempfile.gettempdir(), "unpack-locks")
    if not os.path.isdir(d):
        os.makedirs(d, exist_ok=True)
        try:
            os.chmod(d, 0o1777)  # every user's ingests lock here, as in /tmp
        except OSError:
            pass
    return d


def _identity(real: str) -> tuple | None:
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _acquire(path, real: str) -> tuple:
    """Take both locks of :func:`writer_lock` (creating the store if missing);
    the file's identity, registered in ``_HELD``."""
    import duckdb

    locks, created = [], False
    try:
        locks.append(_lock(real + ".ingest.lock", path))
        if not os.path.exists(real):
            duckdb.connect(real).close()  # an empty store, so the file has an inode
            created = True
        key = _identity(real)
        locks.append(_lock(os.path.join(lock_dir(), "%x-%d.ingest.lock" % key), path))
    except BaseException as e:
        if created:
            _drop_if_blank(real)
        for name, fd in reversed(locks):
            _unlock(name, fd)
        if isinstance(e, (OSError, duckdb.Error)):
            raise_mapped(path, e, opening=True)
        raise
    _HELD[key] = [locks, 1, created]
    return key


def _lock(name: str, path) -> tuple[str, int]:
    """``(name, fd)`` of the lock file ``name``, held exclusively; a
    :class:`StoreError` when another process holds it. A file its last holder
    removed between our open and our lock is not the lock any more: open again."""
    import fcntl

    while True:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: reading is enough to lock it
            fd = os.open(name, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"database {str(path)!r} is open in another process: another "
                "ingest is writing it, maybe under another name (a hard link or "
                "a symlink is the same file; one ingest per file); wait for it "
                "to finish or use another --db"
            ) from None
        try:
            if os.stat(name).st_ino == os.fstat(fd).st_ino:
                return name, fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlock(name: str, fd: int) -> None:
    try:
        os.unlink(name)  # while still held: a waiting process then sees it gone
    except OSError:
        pass
    os.close(fd)


def _drop_if_blank(real: str) -> None:
    """Remove the store :func:`writer_lock` created if nothing was written to it."""
    import duckdb

    try:
        con = duckdb.connect(real, read_only=True)
        try:
            n = con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0]
        finally:
            con.close()
        if n == 0:
            for f in (real, real + ".wal"):
                if os.path.exists(f):
                    os.unlink(f)
    except (OSError, duckdb.Error):
        pass  # it stays: an empty store is harmless


def insert_arrow(conn: sa.Connection, table: str, data) -> int:
    """Insert an Arrow table (or DataFrame) into ``table`` by column name, in one
    statement. Returns the number of rows."""
    n = data.num_rows if hasattr(data, "num_rows") else len(data)
    if n == 0:
        return 0
    raw = conn.connection.driver_connection
    cols = ", ".join(
        f'"{c}"' for c in (data.column_names if hasattr(data, "column_names") else data.columns)
    )
    view = f"_incoming_{table}"
    raw.complete()  # DuckDB >= 2: finish the last statement's result before new work
    raw.register(view, data)
    try:
        raw.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
        raw.complete()
    finally:
        raw.unregister(view)
    return n


def next_id(conn: sa.Connection, column: sa.Column) -> int:
    """One more than the largest id in use (ids are given out by the single writer)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(column), 0))).scalar()) + 1


def file_bytes(path) -> int:
    """Size of the database file plus its write-ahead log."""
    return sum(os.path.getsize(p) for p in (str(path), f"{path}.wal") if os.path.exists(p))
