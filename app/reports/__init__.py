"""Reports over the store (docs/METHOD.md §10): composition, duplicate suppression,
and the toy induction report (delegated to ``unpack.toy``).

Reports only read the database through :func:`app.db.open_db`; when traces
they need are missing they call the ingest (:func:`ingest.run.ingest`), the
only write path. Shared helpers live here: :class:`NoData` and the
Markdown/CSV writers.
"""
from __future__ import annotations

import math
from pathlib import Path

from unpack.errors import InputError


class NoData(InputError):
    """The database has no rows the report needs. ``command`` is what would
    ingest them; the CLI prints both and exits 1."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        self.command = command


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.3f}"
    return str(v).replace("|", "\\|")


def markdown_table(df, floatfmt=None) -> str:
    """A GitHub Markdown table of a DataFrame (no extra dependency).
    ``floatfmt``: optional function float -> str."""
    fmt = floatfmt or _cell
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [fmt(v) if isinstance(v, float) else _cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out_dir, name: str, markdown: str, tables: dict, figure=None) -> list[Path]:
    """Write ``{name}.md``, one ``{name}_{key}.csv`` per table and, if given, the
    matplotlib ``figure`` as ``{name}.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.md"]
    written[0].write_text(markdown + "\n", encoding="utf-8")
    for key, df in tables.items():
        p = out / f"{name}_{key}.csv"
        df.to_csv(p, index=False)
        written.append(p)
    if figure is not None:
        p = out / f"{name}.png"
        figure.savefig(p, dpi=100)
        written.append(p)
    return written
