"""Compare across real model sizes, as a user gets it: ``unpack demo --real`` (one
IOI prompt with its three controls on SmolLM2-135M and on every fetched real model;
no toy ladder) and then the app's Compare page in headless Chromium, which must show
each real model beside the others, ordered by size.

``.ci/setup`` fetches Qwen2.5-Coder-0.5B and Gemma-3-270M; when either is missing this
FAILS, naming the command that fetches it."""

from __future__ import annotations

import subprocess

import pytest

from tests.browser import (
    chromium_page,
    no_exception,
    open_page,
    require_browser,
    running_app,
    shot,
    sql,
    unpack_command,
)
from unpack import models

REAL = {"smollm2-135m": 30, "gemma-3-270m": 18, "qwen2.5-coder-0.5b": 24}  # alias -> layers


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    require_browser()
    for alias in ("gemma-3-270m", "qwen2.5-coder-0.5b"):
        if not models.gguf_path(alias).is_file():
            raise AssertionError(
                f"{alias} is not fetched here: run `unpack models fetch {alias}` (.ci/setup does)"
            )
    db = tmp_path_factory.mktemp("demo-real") / "demo.duckdb"
    run = subprocess.run(
        unpack_command()
        + ["demo", "--real", "--n", "1", "--ladder-n", "0", "--db", str(db), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return db


def test_demo_real_stores_each_real_model(demo_store):
    got = sql(
        demo_store,
        "SELECT m.name AS model, count(*) AS n, min(m.n_params) AS p "
        "FROM prompts p JOIN runs r USING (run_id) JOIN models m USING (model_id) "
        "WHERE p.task = 'ioi' AND p.status = 'ok' GROUP BY m.name",
    )
    n = dict(zip(got["model"], got["n"]))
    assert all(n.get(m) == 4 for m in REAL), n  # one prompt, four conditions, per model
    size = dict(zip(got["model"], got["p"]))
    assert size["smollm2-135m"] < size["gemma-3-270m"] < size["qwen2.5-coder-0.5b"], size


def test_compare_shows_real_models_side_by_side_by_size(demo_store):
    with running_app(demo_store) as url, chromium_page() as page:
        open_page(page, url + "/compare", "h3:has-text('Circuits aligned by relative depth')")
        no_exception(page)
        page.get_by_text("qwen2.5-coder-0.5b (24 layers)").wait_for()
        body = page.inner_text("body")
        for alias, layers in REAL.items():
            assert f"{alias} ({layers} layers)" in body, alias
        # the caption lists the working set's models ordered by size
        caption = next(line for line in body.splitlines() if "models ordered by size" in line)
        order = [caption.index(m) for m in REAL]
        assert order == sorted(order), caption
        for text in ("Credit by role", "Duplicate suppression", "What changes with size"):
            assert text in body, text
        assert page.locator(".js-plotly-plot").count() >= 2
        shot(page, "compare_real")
