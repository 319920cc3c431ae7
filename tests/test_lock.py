"""The lock .ci/requirements.txt (what .ci/setup installs) against pyproject.toml:
every requirement of the project and of the extras CI takes has a pinned version
that satisfies it, and torch is the local CPU build's 2.13.0. A dependency added
to pyproject.toml without ``bash .ci/lock`` fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "requirements.txt"


def requirements(extras: list[str]) -> list[Requirement]:
    """The project's requirements with ``extras``, its own extras (``unpack[store]``) expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out, todo, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for r in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(r.name) == "unpack":
                todo += [x for x in r.extras if x not in seen]
            else:
                out.append(r)
    return out


def pins() -> dict[str, Version]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", LOCK.read_text(), re.M)
    return {canonicalize_name(n): Version(v) for n, v in found}


def test_the_lock_pins_every_requirement_within_its_range():
    locked = pins()
    assert len(locked) > 50, f"{LOCK} has {len(locked)} pins: refresh it with bash .ci/lock"
    for r in requirements(["app", "ray", "test"]):
        name = canonicalize_name(r.name)
        assert name in locked, f"{r} is not in {LOCK.name}: run bash .ci/lock"
        assert r.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK.name} has {name}=={locked[name]}, outside {r}: run bash .ci/lock"
        )
        for extra in r.extras:  # mkdocstrings[python]: the handler's own package
            assert canonicalize_name(f"{r.name}-{extra}") in locked, (r, extra)


def test_the_lock_holds_torch_at_the_local_cpu_build():
    torch = pins()["torch"]
    assert torch.public == "2.13.0", f"torch=={torch} in {LOCK.name}; CI installs torch 2.13.0"
