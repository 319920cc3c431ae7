"""A ladder of models in one command: ``unpack ingest --model A --model B``
writes one run per model on the same prompts, and the Compare page shows them
side by side (Streamlit's test harness)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from tests.app_harness import assert_clean, open_app, sql, widget
from tests.models import build_model_dir


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """``(db, [small, large], stdout)`` of one ``unpack ingest`` with two models
    (2- and 3-layer random models sharing a word-level tokenizer)."""
    import contextlib
    import io

    from unpack.cli import main

    where = tmp_path_factory.mktemp("ladder")
    small = str(build_model_dir(where / "small-gpt2", "gpt2", 2, seed=0))
    large = str(build_model_dir(where / "large-neox", "neox", 3, seed=1))
    db = where / "ladder.duckdb"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "ingest",
                "--model",
                small,
                "--model",
                large,
                "--task",
                "ioi",
                "--n",
                "3",
                "--controls",
                "--db",
                str(db),
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
    assert code == 0, out.getvalue()
    return db, [small, large], out.getvalue()


def rows(db, q):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def test_two_models_in_one_command_write_two_runs_on_the_same_prompts(ladder):
    db, names, out = ladder
    assert out.count("ingest finished") == 2
    runs = rows(
        db,
        "SELECT m.name, r.status, count(p.prompt_id) FROM runs r JOIN models m "
        "USING (model_id) JOIN prompts p USING (run_id) GROUP BY ALL ORDER BY 1",
    )
    assert runs == sorted([(n, "done", 12) for n in names])
    texts = {
        n: rows(
            db,
            f"""SELECT p.seq, p.text, p.target, p.distractor, p.condition
                             FROM prompts p JOIN runs r USING (run_id) JOIN models m USING (model_id)
                             WHERE m.name = '{n}' ORDER BY p.seq""",
        )
        for n in names
    }
    assert texts[names[0]] == texts[names[1]] and len(texts[names[0]]) == 12
    assert len({t[1] for t in texts[names[0]]}) >= 3  # real prompts, not one repeated


def test_compare_page_shows_the_two_runs_side_by_side(monkeypatch, ladder):
    db, names, _ = ladder
    at = open_app(monkeypatch, db, "compare")
    widget(at.selectbox, "Condition").set_value("(all)").run()
    assert_clean(at)
    role_table = [d.value for d in at.dataframe if "role" in d.value.columns][0]
    assert {"small-gpt2", "large-neox"} <= set(role_table.columns)
    # through the app's own handle: this process has the file open with its settings
    want = sql(
        db, "SELECT model, condition, role, mean_credit FROM credit_by_role WHERE root = 'target'"
    ).itertuples(index=False)
    want = list(want)
    assert len(want) > 0
    for model, cond, role, mean in want:
        got = role_table[(role_table["condition"] == cond) & (role_table["role"] == role)]
        assert np.isclose(got[model.rsplit("/", 1)[-1]].iloc[0], mean, rtol=1e-9)
    sup = [d.value for d in at.dataframe if "gap S1 - S2" in d.value.columns][0]
    assert sup["model"].tolist() == ["small-gpt2", "large-neox"]  # smallest first
    assert sup["n prompts"].tolist() == [3, 3]
