"""How much drawn curves overlap, in pixels (tests/test_graph_drawing.py and the
same check on a real store in tests/test_app_read_browser.py)."""

from __future__ import annotations

import itertools
import math


def overlap(a, b, tol: float = 3.0, end: float = 20.0) -> float:
    """The share of curve ``a``'s points (those more than ``end`` pixels from its
    ends, outside the node markers) that lie within ``tol`` pixels of curve ``b``."""

    def dist(p, q0, q1):
        dx, dy = q1[0] - q0[0], q1[1] - q0[1]
        L = dx * dx + dy * dy
        t = 0.0 if L == 0 else max(0.0, min(1.0, ((p[0] - q0[0]) * dx + (p[1] - q0[1]) * dy) / L))
        return math.hypot(p[0] - q0[0] - t * dx, p[1] - q0[1] - t * dy)

    pts = [p for p in a if math.dist(p, a[0]) > end and math.dist(p, a[-1]) > end]
    near = [p for p in pts if min(dist(p, b[i], b[i + 1]) for i in range(len(b) - 1)) < tol]
    return len(near) / max(len(pts), 1)


def worst_overlap(paths: list) -> float:
    """The largest :func:`overlap` between two of ``paths`` (either way round)."""
    return max(
        [max(overlap(a, b), overlap(b, a)) for a, b in itertools.combinations(paths, 2)] or [0.0]
    )
