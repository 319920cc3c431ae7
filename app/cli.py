"""``unpack app``: the Streamlit explorer on a store, opened read-only.

Top-level imports stay light (argparse only); the store is checked and
Streamlit started inside the handler."""

from __future__ import annotations

import time

from unpack.flags import add_command, add_device_flags, add_flags

DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"

_EPILOG = """\
Pages: Overview (models, runs, tasks, failures; the working set is picked in the
sidebar), Prompt (token credit strip, top paths, reroot), Circuit (the layered
graph of the working set), Compare (models side by side on one task) and SQL (a
read-only query box with CSV/Parquet download).

The database is opened read-only with DuckDB's external access off: nothing in
the app can write to it, attach another file or read the file system. Each query
opens the file for its own duration, so `unpack ingest` can write the same file
while the app runs: a query that meets a commit waits for it (a moment), and a
refresh shows the prompts committed so far.

The SQL box has a time and a result-size limit per query, and all of the app's
queries share DuckDB's memory limit and threads (--sql-memory-mb, default 2048;
--sql-threads, default the CPUs up to 4); functions that show the machine's
paths are refused (docs/SECURITY.md).

The app listens on 127.0.0.1 only. --host 0.0.0.0 exposes it to the network:
anyone who can reach the port can read the whole database.

Example:
  unpack demo && unpack app            # then open http://127.0.0.1:8501
"""


_APP_TEXT = """\
Start the Streamlit explorer on a DuckDB store made by `unpack ingest` or `unpack demo`,
opened read-only.
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "app",
        "browse a store in a Streamlit app (read-only)",
        _APP_TEXT,
        epilog=_EPILOG,
        raw=True,
    )
    add_flags(p, "db")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; anything else exposes "
        "the database to the network)",
    )
    add_device_flags(p, "the model of a trace on demand (a reroot on the Prompt page)")
    add_flags(
        p, "threads", threads=dict(help="torch threads of a trace on demand (default: torch's)")
    )
    p.add_argument(
        "--sql-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time limit of one query in the SQL box (default 10); a query past it "
        "is interrupted and says so",
    )
    p.add_argument(
        "--sql-max-mb",
        type=float,
        default=None,
        metavar="MB",
        help="size limit of one SQL result in MiB (default 32); the result cache "
        "holds at most four times this",
    )
    p.add_argument(
        "--sql-memory-mb",
        type=int,
        default=None,
        metavar="MB",
        help="DuckDB's memory limit in MiB for all of the app's queries together "
        "(default 2048); a query past it stops and says so",
    )
    p.add_argument(
        "--sql-threads",
        type=int,
        default=None,
        metavar="N",
        help="DuckDB's threads for the app's queries (default: the CPUs, at most 4)",
    )
    p.set_defaults(func=app_handler)


def streamlit_command(db: str, host: str, port: int) -> list[str]:
    """The exact ``streamlit run`` command line for the app."""
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent / "streamlit_app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--global.developmentMode",
        "false",
        "--global.disableWidgetStateDuplicationWarning",
        "true",
        "--client.toolbarMode",
        "minimal",
        "--",
        "--db",
        db,
    ]


def check_port(host: str, port: int) -> None:
    """Fail early, with a message, if ``port`` is not a usable free port on ``host``."""
    import socket

    from unpack.errors import InputError

    if not 1 <= port <= 65535:
        raise InputError(
            f"--port {port} is not a port number; give one in 1..65535, e.g. --port 8501"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(
            f"--host {host!r} is not an address of this machine ({e.strerror}); use 127.0.0.1"
        ) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a port
        try:  # in TIME_WAIT is free
            s.bind(addr)
        except OSError as e:
            raise InputError(
                f"cannot listen on {host}:{port} ({e.strerror}); pick a free port "
                "with --port, or stop what is using it"
            ) from None


def _limits(args) -> dict[str, str]:
    """The SQL limits as the environment the Streamlit process reads
    (``state.sql_limits``, ``app.db.app_limits``)."""
    from unpack.errors import InputError

    from .db import DEFAULT_MAX_MB, DEFAULT_MEMORY_MB, DEFAULT_THREADS, DEFAULT_TIMEOUT_S

    out = {}
    for flag, value, default, name, top in (
        ("--sql-timeout", args.sql_timeout, DEFAULT_TIMEOUT_S, "UNPACK_SQL_TIMEOUT", 86400),
        ("--sql-max-mb", args.sql_max_mb, DEFAULT_MAX_MB, "UNPACK_SQL_MAX_MB", 65536),
        ("--sql-memory-mb", args.sql_memory_mb, DEFAULT_MEMORY_MB, "UNPACK_SQL_MEMORY_MB", 1 << 20),
        ("--sql-threads", args.sql_threads, DEFAULT_THREADS, "UNPACK_SQL_THREADS", 256),
    ):
        v = default if value is None else value
        if not 0 < v <= top:  # also refuses nan
            raise InputError(
                f"{flag} {value} must be a number above 0 and at most {top}, "
                f"e.g. {flag} {default:g}"
            )
        out[name] = repr(float(v))
    return out


def serve(cmd: list[str], env: dict, grace_s: float = 20.0) -> int:
    """Run the Streamlit server as a child in its own session and stay its parent:
    SIGTERM and SIGINT (Ctrl-C) are forwarded to it, and this process returns
    only once the server has stopped (killed after ``grace_s``), so no server is
    left running, re-parented, once ``unpack app`` is gone. Returns 128 + the
    signal when stopped by one, else the server's exit status."""
    import os
    import signal
    import subprocess

    child = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[tuple[int, float]] = []

    def group_signal(sig) -> None:
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def forward(signum, _frame):
        received.append((signum, time.monotonic()))
        group_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                rc = child.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if received and time.monotonic() - received[0][1] > grace_s:
                    group_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:  # an error in this process: never leave the server behind
            group_signal(signal.SIGKILL)
            child.wait()
        group_signal(signal.SIGKILL)  # anything the server started in its session
        for s, h in old.items():
            signal.signal(s, h)
    return 128 + received[0][0] if received else rc


def app_handler(args) -> int:
    import os
    import sys
    from pathlib import Path

    from .db import open_db

    db = Path(args.db).resolve()
    limits = _limits(args)
    open_db(db).close()  # missing, not a store, truncated or a schema of other code: say so now
    from unpack.on_demand import check_device

    check_device(args.device)  # a device that is not there: a clear error now
    check_port(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"unpack app: warning: listening on {args.host}: anyone who can reach port "
            f"{args.port} can read {db}",
            file=sys.stderr,
        )
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(
        f"unpack app: {db} (read-only) at http://{url_host}:{args.port}  (Ctrl-C stops it)",
        flush=True,
    )
    if args.threads is not None and args.threads < 1:
        from unpack.errors import InputError

        raise InputError(f"--threads {args.threads}: give 1 or more, e.g. --threads 2")
    env = dict(
        os.environ,
        UNPACK_DB=str(db),
        UNPACK_DEVICE=args.device,
        UNPACK_DTYPE=args.dtype or "float32",
        **limits,
    )
    if args.threads:
        env["UNPACK_THREADS"] = str(args.threads)
    return serve(streamlit_command(str(db), args.host, args.port), env)
