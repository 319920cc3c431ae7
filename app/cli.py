"""``unpack app``: the Streamlit explorer on a store, opened read-only.

Top-level imports stay light (argparse only); the store is checked and
Streamlit started inside the handler."""
from __future__ import annotations

import argparse

from unpack.commands import add_device_flags

DEFAULT_DB = "unpack.duckdb"
DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"

_EPILOG = """\
Pages: Overview (models, runs, tasks, failures; the working set is picked in the
sidebar), Prompt (token credit strip, top paths, reroot), Circuit (the layered
graph of the working set), Compare (models side by side on one task) and SQL (a
read-only query box with CSV/Parquet download).

The database is opened read-only with DuckDB's external access off: nothing in
the app can write to it, attach another file or read the file system. While the
app has the file open, an ingest into the same file waits for it to close.

The app listens on 127.0.0.1 only. --host 0.0.0.0 exposes it to the network:
anyone who can reach the port can read the whole database.

Example:
  unpack demo && unpack app            # then open http://127.0.0.1:8501
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="browse a store in a Streamlit app (read-only)",
        description="Start the Streamlit explorer on a DuckDB store made by `unpack ingest` "
                    "or `unpack demo`, opened read-only.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}; anything else exposes "
                        "the database to the network)")
    add_device_flags(p, "the model of a trace on demand (a reroot on the Prompt page)")
    p.set_defaults(func=app_handler)


def streamlit_command(db: str, host: str, port: int) -> list[str]:
    """The exact ``streamlit run`` command line for the app."""
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent / "streamlit_app.py"
    return [sys.executable, "-m", "streamlit", "run", str(script),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--global.developmentMode", "false", "--client.toolbarMode", "minimal",
            "--", "--db", db]


def check_port(host: str, port: int) -> None:
    """Fail early, with a message, if ``port`` is not a usable free port on ``host``."""
    import socket

    from unpack.errors import InputError

    if not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a port number; give one in 1..65535, e.g. --port 8501")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(f"--host {host!r} is not an address of this machine ({e.strerror}); "
                         "use 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a port
        try:                                                     # in TIME_WAIT is free
            s.bind(addr)
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); pick a free port "
                             "with --port, or stop what is using it") from None


def app_handler(args) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from .db import open_db

    db = Path(args.db).resolve()
    open_db(db).close()  # missing file, not a store or an old schema: a clear error now
    from unpack.loading import resolve_device
    resolve_device(args.device)  # a device that is not there: a clear error now
    check_port(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"unpack app: warning: listening on {args.host}: anyone who can reach port "
              f"{args.port} can read {db}", file=sys.stderr)
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"unpack app: {db} (read-only) at http://{url_host}:{args.port}  (Ctrl-C stops it)",
          flush=True)
    env = dict(os.environ, UNPACK_DB=str(db), UNPACK_DEVICE=args.device,
               UNPACK_DTYPE=args.dtype or "float32")
    try:
        return subprocess.call(streamlit_command(str(db), args.host, args.port), env=env)
    except KeyboardInterrupt:
        return 130
