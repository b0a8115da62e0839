"""`ExportRecord`s written back to the workspace database: each row checked before the
database sees it (a bad row is skipped with its reason, never a crash halfway), all rows in one
transaction, a row already present not added again, so a re-import is a no-op."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.engine import Engine
from sqlmodel import select

from exports.records import GOLD_SOURCES, IMPORTED, ExportRecord
from safesail.db.tables import Explanation, SaeRecord, Score, session_scope
from safesail.taxonomy import Taxonomy


class ImportReport(NamedTuple):
    """What an import did: rows added, rows already present, rows skipped (where, why)."""

    added: int
    present: int
    skipped: list[tuple[str, str]]


MAX_EXPLANATION_CHARS = 20_000
"""The longest explanation an import accepts: an explanation is a sentence or a paragraph; a
megabyte "explanation" is a broken or hostile file, and it would be shown in every view."""


def record_problem(record: ExportRecord) -> str | None:
    """Why a record read from a file cannot be stored (wrong types, an oversized text, a bad
    timestamp or score), or None: checked before the database sees it, so a bad row is a
    skipped row, never a crash halfway through the transaction."""
    if not isinstance(record.sae_id, str) or not isinstance(record.source, str):
        return "bad row: sae_id and source must be text"
    if isinstance(record.index, bool) or not isinstance(record.index, int):
        return "bad row: index must be an integer"
    if not isinstance(record.explanation, str):
        return "bad row: explanation must be text"
    if len(record.explanation) > MAX_EXPLANATION_CHARS:
        return (
            f"explanation too long: {len(record.explanation)} > {MAX_EXPLANATION_CHARS} characters"
        )
    if not isinstance(record.concepts, list) or not all(
        isinstance(c, str) for c in record.concepts
    ):
        return "bad row: concepts must be a list of text"
    if record.author is not None and not isinstance(record.author, str):
        return "bad row: author must be text"
    if record.created_at:
        try:
            datetime.fromisoformat(record.created_at)
        except (TypeError, ValueError):
            return f"bad row: created_at {str(record.created_at)[:40]!r} is not an ISO time"
    scores = record.scores or []
    if not isinstance(scores, list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("scorer"), str)
        and isinstance(s.get("value"), int | float)
        and not isinstance(s.get("value"), bool)
        for s in scores
    ):
        return "bad row: scores must be a list of {scorer, value}"
    return None


def import_records(
    engine: Engine,
    taxonomy: Taxonomy,
    records: list[ExportRecord],
    *,
    model: str | None = None,
    skipped: list[tuple[str, str]] | None = None,
    new_saes: Sequence[SaeRecord] = (),
) -> ImportReport:
    """Write records as Explanation (+ Score) rows in one transaction; a record already present
    (same SAE, feature, source, text and author) is not added again, so re-import is a no-op.
    `new_saes` (the records a file's own SAEs need) are written in the same transaction, and
    only when some row is added: a file whose every row is rejected leaves no trace."""
    skipped = list(skipped or [])
    allowed = set(taxonomy.label_values())
    added = present = 0
    with session_scope(engine) as session:
        saes = {r.id: r for r in session.exec(select(SaeRecord))}
        pending = [r for r in new_saes if r.id not in saes]
        saes.update({r.id: r for r in pending})
        have = {
            (e.sae_id, e.feature, e.source, e.text.strip(), e.author)
            for e in session.exec(select(Explanation))
        }
        # an untrusted re-import of this workspace's own export: the same text by the same
        # author on the same feature is present whatever source the file claimed
        have_any_source = {(sae, feature, text, author) for sae, feature, _, text, author in have}
        for record in records:
            where = f"{str(record.sae_id)[:100]}/{str(record.index)[:20]}"
            problem = record_problem(record)
            if problem:
                skipped.append((where, problem))
                continue
            sae = saes.get(record.sae_id)
            if sae is None:
                problem = f"SAE '{record.sae_id}' is not in this workspace"
            elif not 0 <= record.index < sae.d_sae:
                problem = f"index {record.index} out of range (d_sae={sae.d_sae})"
            elif record.layer is not None and record.layer != sae.layer:
                problem = f"layer {record.layer} does not match SAE {sae.id} (layer {sae.layer})"
            elif model and record.model and record.model != model:
                problem = f"model '{record.model}' is not this workspace's ('{model}')"
            elif unknown := [c for c in record.concepts if c not in allowed]:
                problem = f"unknown concept(s) {', '.join(unknown)}"
            elif record.source not in (*GOLD_SOURCES, "prior"):
                problem = f"unknown source '{record.source}'"
            if problem:
                skipped.append((where, problem))
                continue
            sae_id, index, source, text, author = record.key()
            if record.key() in have or (
                source == "prior" and (sae_id, index, text, author) in have_any_source
            ):
                present += 1
                continue
            have.add(record.key())
            details = dict(record.details or {})
            imported = {
                name: getattr(record, name)
                for name in (
                    "agreement",
                    "kappa",
                    "ls_project",
                    "ls_task_id",
                    "ls_annotation_ids",
                    "annotators",
                )
                if getattr(record, name) not in (None, [])
            }
            if imported:
                details[IMPORTED] = imported
            explanation = Explanation(
                sae_id=record.sae_id,
                feature=record.index,
                source=record.source,
                status=record.status,
                concepts=list(record.concepts),
                text=record.explanation,
                confidence=record.confidence,
                author=record.author,
                model_version=record.model_version,
                probability=record.probability,
                details=details or None,
            )
            if record.created_at:
                explanation.created_at = datetime.fromisoformat(record.created_at)
            if pending:  # the first row kept: its SAE records go in first
                session.add_all(pending)
                session.flush()
                pending = []
            session.add(explanation)
            session.flush()
            for score in record.scores:
                session.add(
                    Score(
                        explanation_id=explanation.id,
                        scorer=score["scorer"],
                        value=float(score["value"]),
                        model=score.get("model"),
                        prompt_version=score.get("prompt_version"),
                        details=score.get("details"),
                    )
                )
            added += 1
    return ImportReport(added, present, skipped)
