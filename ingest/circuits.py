"""Writing circuits and their verification into the store (migration 0003).

Each save is one transaction: a circuit with all of its components and edges,
or a verification with all of its per-prompt results, or nothing.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd

from unpack.components import layer_head

from . import schema as S, store
from .run import code_version


def _now():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _layer_head(names: pd.Series) -> tuple[list, list]:
    pairs = [layer_head(n) for n in names]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _save(db, write) -> int:
    """``write(conn)`` in one transaction on the store ``db`` (waiting while a
    reader holds the file); its result, or the store's error and nothing written."""
    engine = store.connect(db)
    try:
        with store.transaction(engine, db) as conn:
            return write(conn)
    except Exception as e:
        store.raise_mapped(db, e)
    finally:
        engine.dispose()


def save_circuit(db, circuit) -> int:
    """Store an :class:`ingest.discover.Circuit`; returns its ``circuit_id``."""

    def write(conn) -> int:
        cid = store.next_id(conn, S.circuits.c.circuit_id)
        conn.execute(
            S.circuits.insert().values(
                circuit_id=cid,
                run_id=circuit.run_id,
                model=circuit.model,
                preset=circuit.preset,
                task=circuit.task,
                condition=circuit.condition,
                params=json.dumps(circuit.params, sort_keys=True),
                prompt_ids=json.dumps([int(i) for i in circuit.prompt_ids]),
                n_prompts=len(circuit.prompt_ids),
                n_components=len(circuit.components),
                n_edges=len(circuit.edges),
                code_version=code_version(),
                created_at=_now(),
            )
        )
        comps = circuit.components.assign(circuit_id=cid)
        store.insert_arrow(
            conn,
            "circuit_components",
            comps[
                [
                    "circuit_id",
                    "component",
                    "layer",
                    "head",
                    "depth",
                    "root",
                    "share",
                    "direct_effect",
                ]
            ],
        )
        e = circuit.edges.assign(circuit_id=cid)
        if len(e):
            e["parent_layer"], e["parent_head"] = _layer_head(e["parent"])
            e["child_layer"], e["child_head"] = _layer_head(e["child"])
            store.insert_arrow(
                conn,
                "circuit_edges",
                e[
                    [
                        "circuit_id",
                        "parent",
                        "parent_layer",
                        "parent_head",
                        "child",
                        "child_layer",
                        "child_head",
                        "mode",
                        "weight",
                        "share",
                    ]
                ],
            )
        return cid

    return _save(db, write)


def save_verification(db, ver) -> int:
    """Store an :class:`ingest.verify.Verification`; returns its ``verification_id``."""

    def write(conn) -> int:
        vid = store.next_id(conn, S.circuit_verifications.c.verification_id)
        conn.execute(
            S.circuit_verifications.insert().values(
                verification_id=vid,
                code_version=code_version(),
                created_at=_now(),
                baseline=json.dumps(ver.baseline),
                **ver.summary(),
            )
        )
        rows = ver.per_prompt.assign(verification_id=vid)
        store.insert_arrow(
            conn,
            "circuit_prompt_results",
            rows[["verification_id", "prompt_id", "clean", "knocked", "kept", "faithfulness"]],
        )
        return vid

    return _save(db, write)
