"""The format registry and what the format writers and readers share: which record a
one-explanation-per-feature format keeps, module names per SAE, paths confined to the export
folder, the data file of an export, the simulation score of formats that hold only that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine

from exports.records import ExportRecord
from safesail.db.queries import SOURCE_RANK
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError

Skipped = list[tuple[str, str]]
"""(where, why) of every row a reader could not use."""


class Format(NamedTuple):
    """A registered format: how to write records into a folder and read them back."""

    name: str
    write: Callable[..., dict[str, Any]]
    """(records, folder[, features]) -> manifest extras (files written, module -> SAE maps)."""
    read: Callable[[Path, dict[str, Any], SaeRecord | None], tuple[list[ExportRecord], Skipped]]
    """(path, manifest or {}, target SAE) -> records and skipped rows."""
    keeps: tuple[str, ...]
    """Record fields that survive a round trip."""
    features: Callable[[Engine, list[ExportRecord]], Any] | None = None
    """What the layout holds about each feature beyond its explanations (Neuronpedia: density
    and top activations), read from the workspace and passed to `write` as its third argument
    when the export has a workspace."""


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def one_per_feature(records: list[ExportRecord]) -> list[ExportRecord]:
    """The record a one-explanation-per-feature format keeps: accepted first, then human, auto,
    prior, then the newest."""
    best: dict[tuple[str, int], ExportRecord] = {}
    for r in sorted(
        records,
        key=lambda r: (
            r.status != "accepted",
            SOURCE_RANK.get(r.source, 3),
            _neg_time(r.created_at),
        ),
    ):
        best.setdefault((r.sae_id, r.index), r)
    return sorted(best.values(), key=lambda r: (r.sae_id, r.index))


def _neg_time(created_at: str | None) -> str:
    """Sort key putting newer ISO times first."""
    return "".join(chr(0x10FFFF - ord(c)) for c in (created_at or ""))


def modules_by_sae(records: list[ExportRecord], prefix: str) -> dict[str, str]:
    """SAE id -> module name: `<prefix><layer>` when one SAE holds that layer, else the SAE id."""
    layers: dict[int | None, set[str]] = {}
    for r in records:
        layers.setdefault(r.layer, set()).add(r.sae_id)
    return {
        sae: (f"{prefix}{layer}" if layer is not None and len(ids) == 1 else sae)
        for layer, ids in layers.items()
        for sae in ids
    }


def inside(out: Path, *parts: str) -> Path:
    """out/parts..., refusing any name (built from an SAE id) that would leave the folder: a
    path separator, '.', '..', an absolute path, a NUL, or a link out."""
    for part in parts:
        if (
            not part
            or part in (".", "..")
            or any(c in part for c in "/\\\0")
            or Path(part).is_absolute()
        ):
            raise SafesailError(f"refusing to write {part!r}: it would leave the export folder — export that SAE "
                "under a plain id (letters, digits, '.', '_', '-')")
    target = out.joinpath(*parts)
    if not target.resolve().is_relative_to(out.resolve()):
        raise SafesailError(f"refusing to write {target}: it would leave the export folder {out} — remove the link "
            "there, or give another --out")
    return target


def sae_for(module: str, manifest: dict[str, Any], sae: SaeRecord | None) -> str | None:
    return (manifest.get("modules") or {}).get(module) or (sae.id if sae else None)


def data_file(path: Path, name: str) -> Path:
    target = path / name if path.is_dir() else path
    if not target.is_file():
        raise SafesailError(f"no {name} at {path} — point at the file, or the folder an export wrote")
    return target


SIMULATION = ("simulation", "correlation")
"""Scorers whose value is a simulation correlation score, in order of preference."""


def simulation_score(value: float) -> dict[str, Any]:
    """A score row from a format that holds only the simulation correlation."""
    return {"scorer": "simulation", "value": float(value), "model": None, "prompt_version": None}
