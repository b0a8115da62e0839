"""The lossless formats, one flat row per record: jsonl, parquet and csv (an empty optional
text cell of csv reads back as missing)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from exports.formats.registry import Format, data_file, register
from exports.records import FIELDS, ExportRecord
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError


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


def _read_jsonl(path: Path, _manifest: dict, _sae: SaeRecord | None):
    records, skipped = [], []
    with open(data_file(path, "explanations.jsonl"), encoding="utf-8") as fh:
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
_FLOATS = ("confidence", "probability", "bound", "agreement", "kappa")
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
        rows = pq.read_table(data_file(path, "explanations.parquet")).to_pylist()
    except OSError as exc:
        raise SafesailError(f"cannot read parquet {path}: {exc} — check it is a whole parquet file") from None
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
    with open(data_file(path, "explanations.csv"), encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, strict=True)  # an unterminated quote is an error
        while True:
            try:  # a line the csv module cannot parse (NUL, oversized field) is a skipped row
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                skipped.append((f"line {reader.line_num}", f"unparsable CSV: {exc}"))
                continue
            if any("\0" in v for v in row.values() if isinstance(v, str)):
                skipped.append((f"line {reader.line_num}", "unparsable CSV: a NUL byte"))
                continue
            try:
                records.append(_from_dict({k: _csv_value(k, v) for k, v in row.items()}))
            except (ValueError, TypeError, AttributeError) as exc:
                skipped.append((f"line {reader.line_num}", f"bad row: {exc}"))
    return records, skipped


register(Format("csv", _write_csv, _read_csv, FIELDS))
