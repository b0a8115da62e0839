"""Where an imported file's rows come from and how far they are believed: the manifest an
export wrote beside its data, and the trust rule every import applies (exports.api for the
formats, exports.neuron_db for a Safe-SAIL DB).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exports.records import ExportRecord
from safesail.errors import SafesailError


def manifest_name(fmt: str) -> str:
    return f"{fmt}.manifest.json"


def read_manifest(fmt: str, path: Path) -> dict[str, Any]:
    """The manifest next to an export's folder or data file ({} without one: a file not made
    by safesail); a missing path is a one-line error."""
    if not path.exists():
        raise SafesailError(f"no such file or folder: {path} — check the path")
    folder = path if path.is_dir() else path.parent
    manifest_file = folder / manifest_name(fmt)
    return json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}


PROVENANCE = "provenance"
"""Key in an imported row's details: {file, imported_at, trusted[, claimed_source,
claimed_status]}."""


def apply_trust(records: list[ExportRecord], path: Path, *, trust: bool) -> None:
    """The trust rule of every import: a file's `source` and `status` are claims. Untrusted
    (the default), every row becomes a prior (`source="prior"`, ranked below human and automatic
    labels and out of the gold set), so a crafted file cannot make gold; what it claimed is kept
    in the row's details. Trusted (`--trust`), rows keep their source. Either way the file path
    and the import time are recorded as provenance in the row's details."""
    origin = {
        "file": str(Path(path).resolve()),
        "imported_at": datetime.now(UTC).isoformat(),
        "trusted": trust,
    }
    for r in records:
        provenance = dict(origin)
        if not trust and r.source != "prior":
            provenance.update(claimed_source=r.source, claimed_status=r.status)
            r.source = "prior"
        r.details = {**(r.details or {}), PROVENANCE: provenance}
