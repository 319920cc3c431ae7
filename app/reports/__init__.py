"""Reports over the store (docs/METHOD.md §10) that only read it, through
:func:`app.db.open_db`: duplicate suppression here, the toy induction report in
``unpack.toy``. The composition report stores the rerooted traces it lacks, so it
is write-side work: ``ingest.composition``. :class:`NoData` and the Markdown/CSV
writers live in ``ingest.queries``, shared by both.
"""

from __future__ import annotations

from ingest.queries import NoData, markdown_table, write_outputs  # noqa: F401
