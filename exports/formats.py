"""One writer and one reader per export format, in a registry.

Formats and what each keeps (everything else is lost on a round trip):
- jsonl, parquet: every field (lossless).
- csv: every field; an empty optional text cell reads back as missing.
- neuronpedia: SAE, layer, index, model, text, source, status, author and scores (scorer, value,
  model); loses concepts, probability, confidence, agreement, Label Studio ids, details, times.
- delphi: SAE, layer, index and text of one explanation per feature (accepted, human first).
- openai: SAE, layer, index, texts and the simulation score (ev_correlation_score).
- safesail-db: SAE, layer, index, text, simulation score (correlation_score) and tags of one
  explanation per feature; sexual_content is written as Safe-SAIL's "pornography".
Formats without provenance (delphi, openai, safesail-db) read back as source "prior".
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from exports.records import FIELDS, ExportRecord
from safesail.errors import SafesailError
from safesail.storage import SOURCE_RANK, SaeRecord
from safesail.taxonomy import normalize_name

Skipped = list[tuple[str, str]]
"""(where, why) of every row a reader could not use."""


class Format(NamedTuple):
    """A registered format: how to write records into a folder and read them back."""

    name: str
    write: Callable[[list[ExportRecord], Path], dict[str, Any]]
    """(records, folder) -> manifest extras (files written, module -> SAE maps)."""
    read: Callable[[Path, dict[str, Any], SaeRecord | None], tuple[list[ExportRecord], Skipped]]
    """(path, manifest or {}, target SAE) -> records and skipped rows."""
    keeps: tuple[str, ...]
    """Record fields that survive a round trip."""


FORMATS: dict[str, Format] = {}


def read_neuron_db(file: Path) -> dict[str, Any]:
    """One Safe-SAIL neuron DB file as its JSON object; anything else is a one-line error."""
    try:
        db = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SafesailError(f"cannot read Safe-SAIL DB {file}: {exc}") from None
    if not isinstance(db, dict):
        raise SafesailError(f"{file} is not a Safe-SAIL neuron DB (expected a JSON object)")
    return db


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def _one_per_feature(records: list[ExportRecord]) -> list[ExportRecord]:
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


def _modules(records: list[ExportRecord], prefix: str) -> dict[str, str]:
    """SAE id -> module name: `<prefix><layer>` when one SAE holds that layer, else the SAE id."""
    layers: dict[int | None, set[str]] = {}
    for r in records:
        layers.setdefault(r.layer, set()).add(r.sae_id)
    return {
        sae: (f"{prefix}{layer}" if layer is not None and len(ids) == 1 else sae)
        for layer, ids in layers.items()
        for sae in ids
    }


def _inside(out: Path, *parts: str) -> Path:
    """out/parts..., refusing any name (built from an SAE id) that would leave the folder: a
    path separator, '.', '..', an absolute path, a NUL, or a link out."""
    for part in parts:
        if (
            not part
            or part in (".", "..")
            or any(c in part for c in "/\\\0")
            or Path(part).is_absolute()
        ):
            raise SafesailError(f"refusing to write {part!r}: it would leave the export folder")
    target = out.joinpath(*parts)
    if not target.resolve().is_relative_to(out.resolve()):
        raise SafesailError(f"refusing to write {target}: it would leave the export folder {out}")
    return target


def _sae_for(module: str, manifest: dict[str, Any], sae: SaeRecord | None) -> str | None:
    return (manifest.get("modules") or {}).get(module) or (sae.id if sae else None)


# -- jsonl ----------------------------------------------------------------------------------
def _from_dict(row: Any) -> ExportRecord:
    if not isinstance(row, dict):
        raise ValueError("not an object")
    unknown = set(row) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    record = ExportRecord(**row)
    if not isinstance(record.index, int) or not isinstance(record.concepts, list):
        raise ValueError("index must be an integer and concepts a list")
    return record


def _write_jsonl(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    with open(out / "explanations.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(vars(r), ensure_ascii=False) + "\n")
    return {"files": ["explanations.jsonl"]}


def _data_file(path: Path, name: str) -> Path:
    target = path / name if path.is_dir() else path
    if not target.is_file():
        raise SafesailError(f"no {name} at {path}")
    return target


def _read_jsonl(path: Path, _manifest: dict, _sae: SaeRecord | None):
    records, skipped = [], []
    with open(_data_file(path, "explanations.jsonl"), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(_from_dict(json.loads(line)))
            except (ValueError, TypeError) as exc:
                skipped.append((f"line {n}", f"bad row: {exc}"))
    return records, skipped


register(Format("jsonl", _write_jsonl, _read_jsonl, FIELDS))


# -- parquet / csv (one flat row per record) -------------------------------------------------
_INTS = ("index", "layer", "d_sae", "ls_task_id")
_FLOATS = ("confidence", "probability", "agreement", "kappa")
_JSON = ("scores", "details", "ls_annotation_ids", "annotators")


def _write_parquet(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {name: pa.string() for name in FIELDS}
    types.update({name: pa.int64() for name in _INTS})
    types.update({name: pa.float64() for name in _FLOATS})
    types["concepts"] = pa.list_(pa.string())
    types["ls_annotation_ids"] = pa.list_(pa.int64())
    types["annotators"] = pa.list_(pa.string())
    columns: dict[str, list] = {name: [] for name in FIELDS}
    for r in records:
        for name in FIELDS:
            value = getattr(r, name)
            if name in ("scores", "details"):
                value = json.dumps(value, ensure_ascii=False)
            columns[name].append(value)
    table = pa.table({n: pa.array(columns[n], type=types[n]) for n in FIELDS})
    pq.write_table(table, out / "explanations.parquet")
    return {"files": ["explanations.parquet"]}


def _read_parquet(path: Path, _manifest: dict, _sae: SaeRecord | None):
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(_data_file(path, "explanations.parquet")).to_pylist()
    except OSError as exc:
        raise SafesailError(f"cannot read parquet {path}: {exc}") from None
    records, skipped = [], []
    for n, row in enumerate(rows, 1):
        try:
            row["scores"] = json.loads(row["scores"])
            row["details"] = json.loads(row["details"])
            records.append(_from_dict(row))
        except (KeyError, ValueError, TypeError) as exc:
            skipped.append((f"row {n}", f"bad row: {exc}"))
    return records, skipped


register(Format("parquet", _write_parquet, _read_parquet, FIELDS))


def _write_csv(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    with open(out / "explanations.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for r in records:
            row = []
            for name in FIELDS:
                value = getattr(r, name)
                if name == "concepts":
                    value = ";".join(value)
                elif name in _JSON:
                    value = json.dumps(value, ensure_ascii=False)
                elif value is None:
                    value = ""
                elif isinstance(value, float):
                    value = repr(value)
                row.append(value)
            writer.writerow(row)
    return {"files": ["explanations.csv"]}


def _csv_value(name: str, cell: str) -> Any:
    if name == "concepts":
        return [c for c in cell.split(";") if c]
    if name in _JSON:
        return json.loads(cell)
    if name == "explanation":
        return cell
    if cell == "":
        return None
    if name in _INTS:
        return int(cell)
    if name in _FLOATS:
        return float(cell)
    return cell


def _read_csv(path: Path, _manifest: dict, _sae: SaeRecord | None):
    records, skipped = [], []
    with open(_data_file(path, "explanations.csv"), encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), 2):
            try:
                records.append(_from_dict({k: _csv_value(k, v) for k, v in row.items()}))
            except (ValueError, TypeError, AttributeError) as exc:
                skipped.append((f"line {n}", f"bad row: {exc}"))
    return records, skipped


register(Format("csv", _write_csv, _read_csv, FIELDS))


# -- Neuronpedia -----------------------------------------------------------------------------
def _write_neuronpedia(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    with (
        open(out / "explanations.jsonl", "w", encoding="utf-8") as ex,
        open(out / "scores.jsonl", "w", encoding="utf-8") as sc,
    ):
        for n, r in enumerate(records):
            common = {"modelId": r.model, "layer": f"{r.layer}-{r.sae_id}", "index": str(r.index)}
            row = {
                "id": f"safesail-{n}",
                **common,
                "description": r.explanation,
                "typeName": f"safesail_{r.source}_{r.status}",
                "explanationModelName": r.author,
            }
            ex.write(json.dumps(row, ensure_ascii=False) + "\n")
            for s in r.scores:
                score = {
                    "explanationId": row["id"],
                    **common,
                    "explanationScoreTypeName": s["scorer"],
                    "explanationScoreModelName": s["model"],
                    "value": s["value"],
                }
                sc.write(json.dumps(score, ensure_ascii=False) + "\n")
    return {"files": ["explanations.jsonl", "scores.jsonl"]}


def _read_neuronpedia(path: Path, _manifest: dict, _sae: SaeRecord | None):
    folder = path if path.is_dir() else path.parent
    scores: dict[str, list[dict]] = {}
    score_file = folder / "scores.jsonl"
    if score_file.is_file():
        for line in score_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                s = json.loads(line)
                scores.setdefault(s.get("explanationId"), []).append(
                    {
                        "scorer": s["explanationScoreTypeName"],
                        "value": float(s["value"]),
                        "model": s.get("explanationScoreModelName"),
                        "prompt_version": None,
                    }
                )
    records, skipped = [], []
    lines = _data_file(folder, "explanations.jsonl").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            layer, sae_id = str(row["layer"]).split("-", 1)
            _, source, status = str(row.get("typeName", "safesail_prior_accepted")).split("_", 2)
            records.append(
                ExportRecord(
                    sae_id=sae_id,
                    index=int(row["index"]),
                    explanation=str(row["description"]),
                    concepts=[],
                    source=source,
                    status=status,
                    layer=int(layer),
                    model=row.get("modelId"),
                    author=row.get("explanationModelName"),
                    scores=sorted(scores.get(row.get("id"), []), key=lambda s: s["scorer"]),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            skipped.append((f"line {n}", f"bad row: {exc}"))
    return records, skipped


register(
    Format(
        "neuronpedia",
        _write_neuronpedia,
        _read_neuronpedia,
        ("sae_id", "index", "layer", "model", "explanation", "source", "status", "author"),
    )
)


# -- delphi ------------------------------------------------------------------------------------
_DELPHI_FILE = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")


def _write_delphi(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    chosen = _one_per_feature(records)
    modules = _modules(chosen, "layers.")
    folder = out / "explanations"
    folder.mkdir()
    for r in chosen:
        name = f"{modules[r.sae_id]}_latent{r.index}.txt"
        _inside(folder, name).write_text(
            json.dumps(r.explanation, ensure_ascii=False), encoding="utf-8"
        )
    return {"files": ["explanations/"], "modules": {m: s for s, m in modules.items()}}


def _read_delphi(path: Path, manifest: dict, sae: SaeRecord | None):
    folder = path / "explanations" if (path / "explanations").is_dir() else path
    if not folder.is_dir():
        raise SafesailError(f"no delphi explanations folder at {path}")
    records, skipped = [], []
    for file in sorted(folder.iterdir()):
        match = _DELPHI_FILE.match(file.name)
        sae_id = _sae_for(match["module"], manifest, sae) if match else None
        if not match or sae_id is None:
            skipped.append((file.name, "not <module>_latent<N>.txt of a known module"))
            continue
        try:
            text = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(text, str):
                raise ValueError("not a JSON string")
        except (ValueError, UnicodeDecodeError) as exc:
            skipped.append((file.name, f"bad file: {exc}"))
            continue
        layer = match["module"].removeprefix("layers.")
        records.append(
            ExportRecord(
                sae_id=sae_id,
                index=int(match["index"]),
                explanation=text,
                concepts=[],
                layer=int(layer) if layer.isdigit() else None,
            )
        )
    return records, skipped


register(Format("delphi", _write_delphi, _read_delphi, ("sae_id", "index", "layer", "explanation")))


# -- OpenAI automated-interpretability ---------------------------------------------------------
_SIMULATION = ("simulation", "correlation")
"""Scorers whose value is a simulation correlation score, in order of preference."""


def _write_openai(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    modules = _modules(records, "")
    by_neuron: dict[tuple[str, int], list[ExportRecord]] = {}
    for r in records:
        by_neuron.setdefault((r.sae_id, r.index), []).append(r)
    root = out / "explanations"
    for (sae_id, index), group in sorted(by_neuron.items()):
        folder = _inside(root, modules[sae_id])
        folder.mkdir(parents=True, exist_ok=True)
        row = {
            "neuron_id": {"layer_index": group[0].layer, "neuron_index": index},
            "scored_explanations": [
                {
                    "explanation": r.explanation,
                    "scored_simulation": {
                        "ev_correlation_score": r.score(*_SIMULATION),
                        "rsquared_score": None,
                        "absolute_dev_explained_score": None,
                    },
                }
                for r in group
            ],
        }
        (folder / f"{index}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return {"files": ["explanations/"], "modules": {m: s for s, m in modules.items()}}


def _read_openai(path: Path, manifest: dict, sae: SaeRecord | None):
    root = path / "explanations" if (path / "explanations").is_dir() else path
    records, skipped = [], []
    for file in sorted(root.glob("*/*.jsonl")):
        where = f"{file.parent.name}/{file.name}"
        sae_id = _sae_for(file.parent.name, manifest, sae)
        if sae_id is None:
            skipped.append((where, "folder is not a known layer or SAE"))
            continue
        try:
            row = json.loads(file.read_text(encoding="utf-8").splitlines()[0])
            neuron = row["neuron_id"]
            for entry in row["scored_explanations"]:
                value = (entry.get("scored_simulation") or {}).get("ev_correlation_score")
                records.append(
                    ExportRecord(
                        sae_id=sae_id,
                        index=int(neuron["neuron_index"]),
                        explanation=str(entry["explanation"]),
                        concepts=[],
                        layer=neuron.get("layer_index"),
                        scores=[_simulation_score(value)] if value is not None else [],
                    )
                )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            skipped.append((where, f"bad file: {exc}"))
    return records, skipped


def _simulation_score(value: float) -> dict[str, Any]:
    return {"scorer": "simulation", "value": float(value), "model": None, "prompt_version": None}


register(Format("openai", _write_openai, _read_openai, ("sae_id", "index", "layer", "explanation")))


# -- Safe-SAIL neuron database -----------------------------------------------------------------
TAGS_IN = {"pornography": "sexual_content", "terrorism": "terror", "political": "politics"}
"""Safe-SAIL tag -> taxonomy concept, where the names differ."""
TAGS_OUT = {"sexual_content": "pornography"}
"""Taxonomy concept -> Safe-SAIL tag, where the names differ."""
_KEY = re.compile(r"^(\d+)_(\d+)$")
_MASKED = re.compile(r"^\s*\*+\s*$")


def _write_safesail_db(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    files: dict[str, str] = {}
    for r in _one_per_feature(records):
        files.setdefault(r.sae_id, f"{r.sae_id}.json")
    for sae_id, name in files.items():
        db = {
            f"{r.layer}_{r.index}": {
                "explanation": r.explanation,
                "correlation_score": r.score(*_SIMULATION),
                "tag_list": [TAGS_OUT.get(c, c) for c in r.concepts],
            }
            for r in _one_per_feature(records)
            if r.sae_id == sae_id
        }
        _inside(out, name).write_text(
            json.dumps(db, ensure_ascii=False, indent=1), encoding="utf-8"
        )
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
            raise SafesailError(f"which SAE does {file.name} belong to? pass --sae ID")
        layer = sae.layer if sae and sae.id == target else None
        db = read_neuron_db(file)
        for key, row in db.items():
            match = _KEY.match(str(key))
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
                    scores=[_simulation_score(score)] if score is not None else [],
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
