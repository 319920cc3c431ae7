"""Seconds per phase of a trace, kept out of the math.

The tracer hands a :class:`Profile` to the sweep, which marks its phases with
``with profile("decompose_s"): ...``; a sweep run without one gets
:data:`NO_PROFILE`, which times nothing. Every :class:`unpack.tracer.TraceResult`
carries the figures per prompt (:func:`per_prompt`) in its ``timing``, which
``unpack bench`` and ``unpack trace`` print.
"""

from __future__ import annotations

import contextlib
import time

PHASES = ("forward_s", "decompose_s", "sweep_s", "paths_s", "total_s")


class Profile:
    """Seconds per phase, added up over every ``with profile(phase):`` block.
    Phases may nest: the sweep's wall time includes the decomposition and the
    path search it calls (:func:`per_prompt` takes them out)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t


class _NoProfile:
    def __call__(self, phase: str):
        return contextlib.nullcontext()


NO_PROFILE = _NoProfile()


def per_prompt(prof: Profile, B: int) -> dict[str, float]:
    """The :data:`PHASES` of a batch of ``B`` prompts, per prompt, from the phases
    the tracer marks: ``forward``, ``sweep`` (which holds ``decompose_s`` and
    ``paths_s``), ``results`` (reading the paths out) and ``total``."""
    s = prof.seconds.get
    dec, paths = s("decompose_s", 0.0), s("paths_s", 0.0)
    return {
        "forward_s": s("forward", 0.0) / B,
        "decompose_s": dec / B,
        "sweep_s": (s("sweep", 0.0) - dec - paths) / B,
        "paths_s": (paths + s("results", 0.0)) / B,
        "total_s": s("total", 0.0) / B,
    }
