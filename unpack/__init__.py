"""Unpack: token credit, named K/Q/V paths and component interactions from a
single forward pass (see docs/METHOD.md).

The names below are imported on first use, so that ``unpack`` (the command)
starts without torch and can answer bad arguments and Ctrl-C at once."""

from .errors import InputError

__all__ = [
    "PRESETS",
    "Config",
    "InputError",
    "TraceFailure",
    "TraceResult",
    "Tracer",
    "make_config",
]
__version__ = "0.1.0"

_LAZY = {
    "PRESETS": ".config",
    "Config": ".config",
    "make_config": ".config",
    "TraceFailure": ".tracer",
    "Tracer": ".tracer",
    "TraceResult": ".tracer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unpack' has no attribute {name!r}")
