"""The optional extras (pyproject.toml, unpack/extras.py): with the modules of
every extra hidden from the import system, as on a machine with only the engine
installed, the engine still traces, the command line still builds, and a
command that needs an extra stops with exit 2 and the pip command that installs
it, not an ImportError."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from unpack.cli import build_parser
from unpack.extras import COMMANDS, EXTRAS, missing_extra

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "unpack" / "toy" / "checkpoints" / "attn-only-d64"

# Hides every module of the extras, then runs the commands given as JSON and
# traces on the toy model; prints one JSON line of what each returned.
_SCRIPT = r"""
import contextlib, io, json, sys
REFUSED = set(sys.argv[1].split(","))

class Hide:  # a finder that finds none of REFUSED, as when they are not installed
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in REFUSED:
            return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
from unpack.cli import main
out = {}
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out[" ".join(argv)] = [code, err.getvalue()]
from unpack import Tracer
res = Tracer(sys.argv[3]).trace("<bos> t12 t118 t99 t12", target=" t118")
out["trace"] = [len(res.tokens), float(res.token_credit.sum())]
out["loaded"] = sorted(m for m in REFUSED if m in sys.modules)
print(json.dumps(out))
"""


def test_commands_without_their_extra_name_the_install(tmp_path):
    refused = sorted(set().union(*EXTRAS.values()))
    db = str(tmp_path / "none.duckdb")
    commands = [
        ["app", "--db", db],
        ["ingest", "--model", "gpt2", "--task", "ioi", "--db", db],
        ["evaluate", "--help"],
    ]
    r = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ",".join(refused), json.dumps(commands), str(TOY)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    code, err = out[f"app --db {db}"]
    assert code == 2, err
    assert "pip install 'unpack[app]'" in err and "streamlit" in err and "Traceback" not in err
    code, err = out[f"ingest --model gpt2 --task ioi --db {db}"]
    assert code == 2, err
    assert "pip install 'unpack[store]'" in err and "duckdb" in err and "Traceback" not in err
    assert out["evaluate --help"][0] == 0  # the parser builds without the extras
    n, credit = out["trace"]
    assert n == 5 and math.isfinite(credit) and credit != 0.0
    assert out["loaded"] == []


def test_a_module_met_on_the_way_names_its_smallest_extra():
    hint = missing_extra(
        ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib.pyplot")
    )
    assert "pip install 'unpack[app]'" in str(hint)
    hint = missing_extra(ModuleNotFoundError("No module named 'duckdb'", name="duckdb"))
    assert "pip install 'unpack[store]'" in str(hint)
    assert "pip install 'unpack[ray]'" in str(missing_extra(ModuleNotFoundError(name="ray")))
    assert missing_extra(ModuleNotFoundError(name="pandas")) is None  # the engine's own: a bug


def test_extras_match_pyproject():
    """unpack/extras.py's modules are the distributions pyproject.toml's extras list."""
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def modules(extra: str) -> set[str]:
        out = set()
        for req in extras[extra]:
            name = re.match(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?", req)
            if name[0].startswith("unpack["):
                out |= set().union(*(modules(x) for x in name[1].strip("[]").split(",")))
            else:
                out.add(name[0].replace("-", "_").lower())
        return out

    for extra, mods in EXTRAS.items():
        assert modules(extra) == set(mods), extra


def test_every_command_with_an_extra_is_a_command():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    assert set(COMMANDS) <= set(sub.choices), set(COMMANDS) - set(sub.choices)
