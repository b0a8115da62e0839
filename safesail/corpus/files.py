"""A user's own corpus file (.jsonl, .json, .csv or .parquet) as corpus records.

Rows keep their file order and their own concepts (validated against the taxonomy); unlabelled
rows fall back to keyword matches, then benign. Every problem with a file is one line naming
the file, row and field, since users fix these files by hand.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from safesail.corpus.records import CorpusRecord, ordered_concepts
from safesail.errors import SafesailError
from safesail.taxonomy import BENIGN, Taxonomy


def _read_rows(path: Path) -> list[Any]:
    """Rows of a user corpus file as parsed objects, one per record."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".parquet"):
        raise SafesailError(
            f"unsupported corpus file type '{suffix or path.name}' — save it as .jsonl, .json, .csv or .parquet"
        )
    if not path.is_file():
        raise SafesailError(f"corpus file not found: {path} — check the path")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SafesailError(f"cannot read corpus file {path}: {exc} — save it as UTF-8 text and rerun") from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise SafesailError(f"cannot read parquet file {path}: {exc} — check it is a whole parquet file") from exc
    if suffix == ".csv":
        try:
            return list(csv.DictReader(io.StringIO(content)))
        except csv.Error as exc:
            raise SafesailError(f"{path.name}: malformed CSV ({exc}) — fix the quoting there, or save it as .jsonl") from exc
    if suffix == ".json":
        try:
            rows = json.loads(content)
        except json.JSONDecodeError as exc:
            raise SafesailError(f"{path.name} is not valid JSON ({exc}) — fix it there, or save it as .jsonl") from exc
        if not isinstance(rows, list):
            raise SafesailError(f"{path.name} is not a JSON list — make it a list of objects, one per text")
        return rows
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SafesailError(f"{path.name}: line {number} is not valid JSON ({exc.msg}) — fix that line") from exc
    return rows


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""


def _row_concepts(value: Any, text: str, taxonomy: Taxonomy, where: str) -> tuple[str, ...]:
    """Validated concepts of one row; unlabeled rows fall back to keywords, then benign."""
    if _is_missing(value) or (isinstance(value, list) and not value):
        return ordered_concepts(taxonomy.match_keywords(text), taxonomy) or (BENIGN,)
    if isinstance(value, str):
        names = [n for n in re.split(r"[;,]", value) if n.strip()]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = value
    else:
        raise SafesailError(f"{where}: concept is {type(value).__name__} — give a string or a list of strings")
    concepts: list[str] = []
    for name in names:
        try:
            canonical = taxonomy.validate(name)
        except SafesailError as exc:
            raise SafesailError(f"{where}: {exc}") from exc
        if canonical not in concepts:
            concepts.append(canonical)
    if BENIGN in concepts and len(concepts) > 1:
        raise SafesailError(f"{where} is labeled '{BENIGN}' and a safety concept — keep one of them")
    return tuple(concepts) if concepts else (BENIGN,)


def load_corpus_file(
    path: Path,
    taxonomy: Taxonomy,
    *,
    text_field: str = "text",
    concept_field: str = "concept",
) -> list[CorpusRecord]:
    """A user's corpus from .jsonl, .json, .csv or .parquet; rows keep their file order."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise SafesailError(f"corpus file {path} has no rows — give a file with at least one text")
    columns: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            columns.update(dict.fromkeys(map(str, row)))
    if text_field not in columns:
        existing = ", ".join(columns) or "none"
        raise SafesailError(f"{path.name} has no '{text_field}' column (its columns: {existing}) — name the text "
            "column with --text-field")
    source = f"user:{path.name}"
    records = []
    for number, row in enumerate(rows, start=1):
        where = f"{path.name} row {number}"
        if not isinstance(row, dict):
            raise SafesailError(f"{where} is not an object — give each row as an object with a '{text_field}' field")
        text = row.get(text_field)
        if _is_missing(text) or (isinstance(text, str) and not text.strip()):
            raise SafesailError(f"{where} has empty or missing '{text_field}' — fill it in or drop the row")
        if not isinstance(text, str):
            raise SafesailError(f"{where}: '{text_field}' is {type(text).__name__} — give the text as a string")
        concepts = _row_concepts(row.get(concept_field), text, taxonomy, where)
        lic = row.get("license")
        lic = lic.strip() if isinstance(lic, str) and lic.strip() else "user-provided"
        records.append(CorpusRecord(text.strip(), source, lic, concepts))
    return records
