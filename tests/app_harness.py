"""The Streamlit app on a store made by a real ingest (tiny random GPT-2 and
GPT-NeoX models saved as Hugging Face directories), and Streamlit's own test
harness to drive it page by page; shared by the app's test files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.models import build_model_dir

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "streamlit_app.py"
PAGES = {
    "overview": None,
    "prompt": "ui/pages/prompt.py",
    "circuit": "ui/pages/circuit.py",
    "compare": "ui/pages/compare.py",
    "sql": "ui/pages/sql.py",
}
MODELS = (("tiny-gpt2", "gpt2", 2), ("tiny-neox", "neox", 3))  # (dir name, family, layers)
ROOTS = ["1.*@END"]  # every head of layer 1, rerooted at END


# ------------------------------------------------------------------ a store from a real ingest


def build_store(
    where: Path,
    n: int = 5,
    models=MODELS,
    roots=ROOTS,
    failing: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[Path, list[str]]:
    """``(db, model names)``: IOI with its ABC controls (4 n prompts per model) traced
    from the target and from ``roots``, ingested into ``where/app.duckdb``; with
    ``failing`` one bad prompt (empty target) is stored as failed."""
    from ingest.run import ingest
    from unpack import Tracer
    from unpack.loading import load_model
    from unpack.tasks import PromptRecord, ioi

    db, names = where / "app.duckdb", []
    for i, (name, family, n_layer) in enumerate(models):
        d = build_model_dir(where / name, family, n_layer, seed=i)
        model, tok = load_model(str(d))
        records = ioi(tok, n, seed=0, controls=True)
        if failing and i == 0:
            records.append(
                PromptRecord(
                    task="ioi",
                    text=records[0].text,
                    target="",
                    distractor=" Mary",
                    condition="ioi_io",
                    template="bad",
                )
            )
        ingest(
            records,
            tracer=Tracer(model=model, tokenizer=tok),
            model_name=str(d),
            db=db,
            roots=roots,
            batch_size=batch_size,
            progress=progress,
        )
        names.append(str(d))
    return db, names


def con_of(db):
    """The process's shared read-only connection (the one the app uses)."""
    from app.db import shared_db

    return shared_db(db)


def sql(db, q, params=None):
    from app.ui.data import q as run

    return run(con_of(db), q, params)


# ------------------------------------------------------------------ the harness


def assert_clean(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_app(monkeypatch, db, page: str | None = None, params: dict | None = None):
    """The app on ``db`` at ``page``; ``params``: query parameters in place before
    the first run of the session (a browser opening a link)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("UNPACK_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=180)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    assert_clean(at)
    if PAGES.get(page):
        at.switch_page(PAGES[page]).run()
        assert_clean(at)
    return at


def widget(seq, label):
    found = [w for w in seq if w.label == label]
    assert found, f"no widget {label!r} among {[w.label for w in seq]}"
    return found[0]


def captions(at) -> list[str]:
    return [c.value for c in at.caption]


def figures(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
