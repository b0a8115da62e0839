"""Safe-SAIL's neuron database: one JSON object per SAE, keyed "<layer>_<index>", with an
explanation, a simulation correlation score and Safe-SAIL's tags (some named differently from
this taxonomy's concepts). Released DBs are read as priors; see exports.neuron_db for which SAE
their rows belong to."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from exports.formats.registry import (
    SIMULATION,
    Format,
    Skipped,
    inside,
    one_per_feature,
    register,
    simulation_score,
)
from exports.records import ExportRecord
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError
from safesail.taxonomy import normalize_name

TAGS_IN = {"pornography": "sexual_content", "terrorism": "terror", "political": "politics"}
"""Safe-SAIL tag -> taxonomy concept, where the names differ."""
TAGS_OUT = {"sexual_content": "pornography"}
"""Taxonomy concept -> Safe-SAIL tag, where the names differ."""
NEURON_KEY = re.compile(r"^(\d+)_(\d+)$")
"""A neuron DB key: layer and feature index."""
_MASKED = re.compile(r"^\s*\*+\s*$")


def read_neuron_db(file: Path) -> dict[str, Any]:
    """One Safe-SAIL neuron DB file as its JSON object; anything else is a one-line error."""
    try:
        db = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SafesailError(f"cannot read Safe-SAIL DB {file}: {exc} — check it is a whole UTF-8 JSON file") from None
    if not isinstance(db, dict):
        raise SafesailError(f"{file} is not a Safe-SAIL neuron DB (not a JSON object) — point at the DB's JSON file, "
            "or give --format")
    return db


def _write_safesail_db(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    chosen = one_per_feature(records)
    files: dict[str, str] = {}
    for r in chosen:
        files.setdefault(r.sae_id, f"{r.sae_id}.json")
    for sae_id, name in files.items():
        db = {
            f"{r.layer}_{r.index}": {
                "explanation": r.explanation,
                "correlation_score": r.score(*SIMULATION),
                "tag_list": [TAGS_OUT.get(c, c) for c in r.concepts],
            }
            for r in chosen
            if r.sae_id == sae_id
        }
        inside(out, name).write_text(json.dumps(db, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"files": sorted(files.values()), "modules": {n: s for s, n in files.items()}}


def read_safesail_db(
    path: Path, manifest: dict, sae: SaeRecord | None
) -> tuple[list[ExportRecord], Skipped]:
    """A released Safe-SAIL neuron DB (or a folder of them, one per SAE) as prior records.

    Skips masked (`***`) and null explanations, keys that are not `<layer>_<index>`, rows of
    another layer than the SAE's, indexes out of range and malformed rows, each with its reason.
    The SAE of a row: the manifest's `sae_by_layer` (the DB's own SAEs, one per layer, see
    exports.api.import_safesail_db), else the file's module, else the given SAE.
    """
    files = sorted(p for p in path.glob("*.json") if "manifest" not in p.name)
    files = files if path.is_dir() else [path]
    by_layer = {int(k): v for k, v in (manifest.get("sae_by_layer") or {}).items()}
    records, skipped = [], []
    for file in files:
        target = (manifest.get("modules") or {}).get(file.name) or (sae.id if sae else None)
        if target is None and not by_layer:
            raise SafesailError(f"{file.name} does not say which SAE it explains — pass --sae ID")
        layer = sae.layer if sae and sae.id == target else None
        db = read_neuron_db(file)
        for key, row in db.items():
            match = NEURON_KEY.match(str(key))
            if not match:
                skipped.append((key, "key is not <layer>_<index>"))
                continue
            if isinstance(row, dict) and row.get("explanation", "") is None:
                skipped.append((key, "null explanation"))
                continue
            if not isinstance(row, dict) or not isinstance(row.get("explanation"), str):
                skipped.append((key, "bad row: no explanation string"))
                continue
            if _MASKED.match(row["explanation"]) or not row["explanation"].strip():
                skipped.append((key, "masked explanation (***)"))
                continue
            row_layer, index = int(match[1]), int(match[2])
            if by_layer:
                target, layer = by_layer.get(row_layer), row_layer
                if target is None:
                    skipped.append((key, f"layer {row_layer}: no SAE registered for it"))
                    continue
            if layer is not None and row_layer != layer:
                skipped.append((key, f"layer {row_layer} does not match SAE {target} ({layer})"))
                continue
            score, tags = row.get("correlation_score"), row.get("tag_list", [])
            if isinstance(score, bool) or (
                score is not None and not isinstance(score, int | float)
            ):
                skipped.append((key, "bad row: correlation_score is not a number"))
                continue
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                skipped.append((key, "bad row: tag_list is not a list of strings"))
                continue
            records.append(
                ExportRecord(
                    sae_id=target,
                    index=index,
                    explanation=row["explanation"],
                    concepts=[TAGS_IN.get(normalize_name(t), normalize_name(t)) for t in tags],
                    layer=row_layer,
                    author="safe-sail",
                    model_version=f"safe-sail-db:{file.name}",
                    scores=[simulation_score(score)] if score is not None else [],
                )
            )
    return records, skipped


register(
    Format(
        "safesail-db",
        _write_safesail_db,
        read_safesail_db,
        ("sae_id", "index", "layer", "explanation", "concepts"),
    )
)
