"""Export the gold set to a folder and import it (or a released Safe-SAIL DB) back.

An export is built in a hidden folder next to its target and moved into place at the end, so an
interrupted export never leaves half a data set behind; rerunning it replaces the files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from exports.formats import FORMATS, Format
from exports.gather import gather_records
from exports.importing import ImportReport, import_records
from exports.neuron_db import import_safesail_db
from exports.provenance import apply_trust, manifest_name, read_manifest
from exports.records import ExportRecord, require_sae
from safesail.db.contracts import Workspace
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError
from safesail.procs import pid_alive, start_time


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise SafesailError(f"unknown format '{name}' — use --format {' or '.join(FORMATS)}")
    return FORMATS[name]


STAGING_OWNER = ".owner-pid"
"""File in an export's staging folder naming the process writing it (pid and start time: a
recycled pid is not the owner)."""


def remove_stale_staging(out: Path, fmt: str) -> None:
    """Delete the staging folders of exports that were killed (their process is gone), which
    would otherwise stay forever, hidden, as large as an export. A folder without an owner
    file is removed once it is a minute old (one in the instant before its owner file)."""
    for folder in out.glob(f".{fmt}-*"):
        if not folder.is_dir():
            continue
        try:
            pid, _, started = (folder / STAGING_OWNER).read_text().partition(" ")
            alive = pid_alive(int(pid), int(started) if started.strip() else None)
        except (OSError, ValueError):
            alive = time.time() - folder.stat().st_mtime < 60
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


def write_export(
    records: list[ExportRecord],
    fmt: str,
    out: Path,
    *,
    extra: dict[str, Any] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Write records in a format into `out` with its manifest; returns the manifest. `engine`:
    the workspace, for formats that also hold per-feature data (Format.features)."""
    spec = get_format(fmt)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SafesailError(
            f"--out {out} is a file or lies under one — give a folder to write into"
        ) from None
    remove_stale_staging(out, fmt)
    staging = Path(tempfile.mkdtemp(prefix=f".{fmt}-", dir=out))
    (staging / STAGING_OWNER).write_text(f"{os.getpid()} {start_time(os.getpid()) or ''}")
    try:
        if spec.features is not None and engine is not None:
            written = spec.write(records, staging, spec.features(engine, records))
        else:
            written = spec.write(records, staging)
        saes = {r.sae_id: {"id": r.sae_id, "layer": r.layer, "d_sae": r.d_sae} for r in records}
        manifest = {
            "format": fmt,
            "created_at": datetime.now(UTC).isoformat(),
            "records": len(records),
            "by_source": dict(Counter(r.source for r in records).most_common()),
            "by_status": dict(Counter(r.status for r in records).most_common()),
            "by_concept": dict(Counter(c for r in records for c in r.concepts).most_common()),
            "features": len({(r.sae_id, r.index) for r in records}),
            "model": next((r.model for r in records if r.model), None),
            "saes": sorted(saes.values(), key=lambda s: s["id"]),
            "keeps": list(spec.keeps),
            **(extra or {}),
            **written,
        }
        (staging / manifest_name(fmt)).write_text(json.dumps(manifest, indent=1))
        for item in staging.iterdir():
            if item.name == STAGING_OWNER:
                continue
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def export_gold(
    ws: Workspace,
    fmt: str,
    out: Path,
    *,
    include_unaccepted: bool = False,
    include_priors: bool = False,
) -> dict[str, Any]:
    """The workspace's gold set in one format; returns the manifest."""
    get_format(fmt)
    records = gather_records(
        ws.engine, include_unaccepted=include_unaccepted, include_priors=include_priors
    )
    return write_export(
        records,
        fmt,
        out,
        extra={"include_unaccepted": include_unaccepted, "include_priors": include_priors},
        engine=ws.engine,
    )


def read_export(
    fmt: str, path: Path, sae: SaeRecord | None = None
) -> tuple[list[ExportRecord], list[tuple[str, str]]]:
    """Records of an export (folder or data file) and the rows the reader could not use."""
    spec = get_format(fmt)
    try:
        return spec.read(path, read_manifest(fmt, path), sae)
    except UnicodeDecodeError as exc:
        raise SafesailError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}) — save it as UTF-8"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):
            reason = " ".join(str(exc).split())[:200]
            raise SafesailError(
                f"{path} is not a readable parquet file ({reason}) — check it is whole"
            ) from None
        raise


def import_file(
    ws: Workspace,
    fmt: str,
    path: Path,
    *,
    sae_id: str | None = None,
    trust: bool = False,
    db_model: str | None = None,
    db_width: int | None = None,
) -> ImportReport:
    """Import an export (or a released Safe-SAIL DB) into the workspace. Rows come in as priors
    unless `trust` (see apply_trust); formats without provenance always do. Rerunning adds
    nothing twice. A Safe-SAIL DB goes to the SAE it was written for (exports.neuron_db;
    `db_model` / `db_width` name a released DB's SAEs when they are not Safe-SAIL's)."""
    if fmt == "safesail-db":
        return import_safesail_db(
            ws, path, sae_id=sae_id, trust=trust, db_model=db_model, db_width=db_width
        )
    sae = require_sae(ws.engine, sae_id) if sae_id else None
    if sae is None and fmt in ("delphi", "openai"):
        sae = _selected_or_none(ws)
    records, skipped = read_export(fmt, path, sae)
    if sae_id:
        for r in records:
            r.sae_id = sae_id
    apply_trust(records, path, trust=trust)
    return import_records(ws.engine, ws.taxonomy, records, model=ws.model_name, skipped=skipped)


def _selected_or_none(ws: Workspace) -> SaeRecord | None:
    try:
        return require_sae(ws.engine, None)
    except SafesailError:
        return None


def print_report(report: ImportReport, *, limit: int = 20) -> None:
    print(
        f"imported {report.added} explanation(s); {report.present} already present; "
        f"{len(report.skipped)} skipped"
    )
    reasons = Counter(why.split(":")[0] for _, why in report.skipped)
    for why, n in reasons.most_common():
        print(f"  skipped {n}: {why}")
    for where, why in report.skipped[:limit]:
        print(f"    {where}: {why}")
    if len(report.skipped) > limit:
        print(f"    ... and {len(report.skipped) - limit} more")
