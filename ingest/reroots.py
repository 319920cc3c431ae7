"""Rerooted traces a stored run lacks, traced and stored into the same run
(docs/METHOD.md §3 rerooting): the write step of discovery (``ingest.discover``)
and of the composition report (``ingest.composition``)."""

from __future__ import annotations

from unpack.errors import InputError


def load_tracer(model: str, command: str | None = None, what: str = ""):
    """A :class:`unpack.Tracer` for the model stored under ``model``; an InputError
    that starts with ``what`` and ends with ``command`` (the fix) when it does not load."""
    from unpack import Tracer
    from unpack.loading import load_model

    try:
        m, tok = load_model(model)
    except Exception as e:  # noqa: BLE001 - any loader failure: say what to do instead
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{what}model {model!r} cannot be loaded here ({why}); "
            + (command or "run this where it loads")
        ) from None
    return Tracer(model=m, tokenizer=tok)


def store_reroots(records, db, model, preset, config, roots, tracer, progress, command) -> None:
    """Store the rerooted traces ``roots`` of ``records`` in the run they came from
    (its ``config``); ``tracer`` None: load the model by its stored name."""
    from .run import ingest

    if tracer is None:
        tracer = load_tracer(
            model, f"ingest them where it loads: {command}", what="rerooted traces are missing and "
        )
    overrides = {k: v for k, v in (config or {}).items() if k not in ("preset", "position_edges")}
    ingest(
        records,
        tracer=tracer,
        model_name=model,
        db=db,
        preset=preset,
        roots=roots,
        overrides=overrides,
        progress=progress,
    )
