"""Unpack: token credit, named K/Q/V paths and component interactions from a
single forward pass (see METHOD.md)."""
from .config import PRESETS, Config, make_config
from .errors import InputError
from .tracer import TraceFailure, Tracer, TraceResult

__all__ = ["PRESETS", "Config", "InputError", "TraceFailure", "TraceResult", "Tracer", "make_config"]
__version__ = "0.1.0"
