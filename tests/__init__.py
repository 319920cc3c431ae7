"""The test suite, a package: every module here is imported as ``tests.<name>``
(pytest runs from the repository root).

Test files (``test_*.py``) import no other test file. What several share lives
in ``conftest.py`` (fixtures) and in helper modules: ``models.py`` (tiny random
models; ``build_model_dir``, the one builder of a model saved on disk),
``helpers.py``, ``app_harness.py`` (the app on a real-ingest store),
``browser.py`` (the app in Chromium), ``hand_store.py`` (a store written by
hand), ``ingest_checks.py``, ``hostile.py``, ``curves.py`` and ``formulas.py``.
Scripts live in ``scripts/`` (``python -m tests.scripts.<name>``).
``test_suite_layout.py`` checks this shape."""
