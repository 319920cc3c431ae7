"""The ``unpack`` command. Subcommands live next to the code they run; modules
that pull in heavy dependencies (the store, the app) are imported only when
their subcommand runs."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import InputError

# Modules that add subcommands: each has ``register(subparsers)`` and keeps its
# top-level imports light (argparse only); heavy imports go inside the handlers.
_REGISTRARS = (
    "unpack.commands",
    "unpack.tasks.cli",
    "unpack.toy.cli",
    "ingest.cli",
    "app.cli",
    "app.reports.cli",
    "app.circuit_cli",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unpack",
        description="Unpack: token credit, named K/Q/V paths and component interactions "
                    "from one forward pass; ingest into DuckDB; explore circuits.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _REGISTRARS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and (mod == e.name or mod.startswith(e.name + ".")):
                continue  # that part of the project is not there (yet)
            raise
        m.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (InputError, FileNotFoundError) as e:
        print(f"unpack {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting up (imports, loading a model)
        print(f"unpack {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
