"""Scripts beside the tests (run from the repository root as ``python -m tests.scripts.<name>``)."""
