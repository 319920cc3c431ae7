"""The ``unpack`` command: the one entry point above all the layers (docs/API.md,
"Layers"). Subcommands live next to the code they run, in the layer of the work
they do; :data:`_REGISTRARS` names their modules, which this module alone imports
across layers (by name, so ``import unpack`` loads no store and no app). Modules
that pull in heavy dependencies (the store, the app) are imported only when
their subcommand runs."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from .errors import InputError
from .extras import missing_extra, require

# Modules that add subcommands: each has ``register(subparsers)`` and keeps its
# top-level imports light (argparse only); heavy imports go inside the handlers.
_REGISTRARS = (
    "unpack.commands",
    "unpack.models",
    "unpack.tasks.cli",
    "unpack.toy.cli",
    "ingest.cli",
    "app.cli",
    "ingest.report_cli",
    "app.reports.cli",
    "ingest.circuit_cli",
    "app.circuit_cli",
    "ingest.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unpack",
        description="Unpack: token credit, named K/Q/V paths and component interactions "
        "from one forward pass; ingest into DuckDB; explore circuits.",
    )
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


_SIGINT_SEEN = False


def _on_sigint(signum, frame):
    """Ctrl-C as usual (KeyboardInterrupt), but remembered: some libraries catch
    it during their imports and raise another error, or swallow it."""
    global _SIGINT_SEEN
    _SIGINT_SEEN = True
    raise KeyboardInterrupt


def _interrupted(e: BaseException | None) -> bool:
    """Whether ``e`` comes from a Ctrl-C: one was seen, or ``e`` is one or was
    raised because of one (a lazy import cut short comes back as another error)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return _SIGINT_SEEN


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        require(args.command)  # the command's optional extra, installed
        code = int(args.func(args) or 0)
    except (InputError, FileNotFoundError) as e:
        print(f"unpack {command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a module of an optional extra, met on the way
        if _interrupted(e):
            return _say_interrupted(command)
        if (hint := missing_extra(e)) is None:
            raise
        print(f"unpack {command}: error: {hint}", file=sys.stderr)
        return 2
    except BaseException as e:  # Ctrl-C while starting up (imports, loading a model)
        if isinstance(e, SystemExit) or not _interrupted(e):
            raise
        return _say_interrupted(command)
    if _SIGINT_SEEN and code != 130:  # a library swallowed the Ctrl-C
        return _say_interrupted(command)
    return code


def _say_interrupted(command: str) -> int:
    print(f"unpack {command}: interrupted", file=sys.stderr)
    return 130


def run() -> None:
    """The console entry point: ``main``, then exit with its status. After a
    Ctrl-C (status 130) the exit is immediate: Python would otherwise end the
    process by SIGINT (status -2) when the Ctrl-C went unhandled anywhere during
    start-up, even inside an import whose error was caught later."""
    signal.signal(signal.SIGINT, _on_sigint)
    code = main()
    if code == 130:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
