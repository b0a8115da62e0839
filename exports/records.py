"""The one record model of the gold set, read from and written back to the workspace database.

Every format writes and reads `ExportRecord`s, so provenance (who / which model), tags, scores,
agreement and Label Studio ids are gathered in one place and every format loses only what its
layout cannot hold.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.causal.config import SCORER as CAUSAL_SCORER
from safesail.db.contracts import read_record
from safesail.db.labeling import AnnotationSummary
from safesail.db.queries import model_name, selected_sae
from safesail.db.tables import (
    Annotation,
    Explanation,
    LabelTask,
    SaeRecord,
    Score,
    session_scope,
)
from safesail.errors import SafesailError
from safesail.taxonomy import Taxonomy

GOLD_SOURCES = ("human", "auto")
"""Sources of the gold set; imported priors are exported only on request."""
_IMPORTED = "imported"
"""Key in Explanation.details holding the provenance an import could not store in its own
tables (Label Studio ids, agreement), so that export -> import -> export gives the same record."""


@dataclass
class ExportRecord:
    """One explanation of one SAE feature, with everything a consumer of the gold set needs."""

    sae_id: str
    """The SAE's id in the workspace."""
    index: int
    """The feature's index in the SAE."""
    explanation: str
    """The explanation text."""
    concepts: list[str]
    """Concept tags (taxonomy names, "uninterpretable")."""
    source: str = "prior"
    """human | auto | prior."""
    status: str = "accepted"
    """accepted | queued | rejected | failed | stale (an acceptance no longer current)."""
    layer: int | None = None
    """The block the SAE reads."""
    d_sae: int | None = None
    """The SAE's width."""
    model: str | None = None
    """The language model the SAE belongs to."""
    author: str | None = None
    """Annotator(s) for human labels, the LLM for automatic ones."""
    model_version: str | None = None
    """Explainer / prompt version, or the Label Studio project for human labels."""
    confidence: float | None = None
    """The annotator's or explainer's own confidence."""
    probability: float | None = None
    """Automatic labels: the confidence of the cascade stage that judged it (the learner's
    probability, or the share of the LLM's votes for its concept)."""
    stage: str | None = None
    """Automatic labels: the cascade stage that made it (concept_model, llm, escalate)."""
    bound: float | None = None
    """Accepted automatic labels: the 1 - delta lower bound on agreement with the experts that
    the stage's threshold was proven at (fixed-sequence testing on gold)."""
    agreement: float | None = None
    """Share of this feature's annotators who gave exactly the final label (human labels only:
    an automatic label's guarantee is `bound`, its stage confidence `probability`)."""
    kappa: float | None = None
    """Annotator agreement (Cohen/Fleiss kappa) of the label's concept, from the labeling loop."""
    created_at: str | None = None
    """ISO time the explanation was made."""
    scores: list[dict[str, Any]] = field(default_factory=list)
    """One {scorer, value, model, prompt_version} per scorer; the causal check's
    (`causal_refusal_delta`) also has `details`: interval, alphas, ablation and steering
    effects, the same effects on P(concept) per label concept (`concept`), prompts."""
    ls_project: str | None = None
    """Label Studio project ("<server url>#<project id>")."""
    ls_task_id: int | None = None
    """Label Studio task id of the feature."""
    ls_annotation_ids: list[int] = field(default_factory=list)
    """Label Studio annotation ids behind a human label."""
    annotators: list[str] = field(default_factory=list)
    """Who annotated the feature."""
    details: dict[str, Any] | None = None
    """The explanation's details (reason of a failure, explainer extras)."""

    def key(self) -> tuple:
        """Identity for idempotent imports: the same explanation of the same feature."""
        return (self.sae_id, self.index, self.source, self.text_key(), self.author)

    def text_key(self) -> str:
        return self.explanation.strip()

    def score(self, *preferred: str) -> float | None:
        """The first of the preferred scorers present, else the first score, else None."""
        by_name = {s["scorer"]: s["value"] for s in self.scores}
        for name in preferred:
            if name in by_name:
                return by_name[name]
        return self.scores[0]["value"] if self.scores else None


FIELDS = tuple(f.name for f in dataclasses.fields(ExportRecord))
"""Field names in declaration order (the column order of tabular formats)."""


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite drops the zone; every time stored here is UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def gather_records(
    engine: Engine,
    *,
    include_unaccepted: bool = False,
    include_priors: bool = False,
    sae_id: str | None = None,
) -> list[ExportRecord]:
    """The gold set (accepted human and automatic explanations) as records, ordered by SAE,
    feature and time; optionally with queued/rejected/failed ones and imported priors."""
    from safesail.explainer.routing import stale_now

    sources = [*GOLD_SOURCES, "prior"] if include_priors else list(GOLD_SOURCES)
    # Plain column rows, not ORM objects: building 100k sqlmodel instances costs most of an export.
    query = select(
        Explanation.id,
        Explanation.sae_id,
        Explanation.feature,
        Explanation.source,
        Explanation.status,
        Explanation.concepts,
        Explanation.text,
        Explanation.confidence,
        Explanation.author,
        Explanation.created_at,
        Explanation.model_version,
        Explanation.probability,
        Explanation.details,
    ).where(Explanation.source.in_(sources))
    if not include_unaccepted:
        query = query.where(Explanation.status == "accepted")
    if sae_id is not None:
        query = query.where(Explanation.sae_id == sae_id)
    query = query.order_by(
        Explanation.sae_id, Explanation.feature, Explanation.created_at, Explanation.id
    )
    with Session(engine) as session:
        rows = session.exec(query).all()
        saes = {r.id: r for r in session.exec(select(SaeRecord))}
        model = model_name(session)
        summary = read_record(session, AnnotationSummary)
        kappas = summary.kappa_per_concept() if summary else {}
        # acceptances a later learner fit or calibration made stale: no longer gold
        stale = set().union(
            *(stale_now(session, s) for s in {r.sae_id for r in rows if r.source == "auto"})
        )
        scores: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for explanation_id, scorer, value, score_model, prompt_version, details in session.exec(
            select(
                Score.explanation_id,
                Score.scorer,
                Score.value,
                Score.model,
                Score.prompt_version,
                Score.details,
            ).order_by(Score.explanation_id, Score.scorer, Score.id)
        ):
            entry = {
                "scorer": scorer,
                "value": value,
                "model": score_model,
                "prompt_version": prompt_version,
            }
            if details and scorer == CAUSAL_SCORER:  # its interval, alphas, effects and prompts
                entry["details"] = details
            scores[explanation_id].append(entry)
        tasks: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for task in session.exec(
            select(
                LabelTask.sae_id,
                LabelTask.feature,
                LabelTask.project,
                LabelTask.task_id,
                LabelTask.pushed_at,
            )
        ):
            tasks[(task.sae_id, task.feature)].append(task)
        annotations: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for ann in session.exec(
            select(
                Annotation.sae_id,
                Annotation.feature,
                Annotation.project,
                Annotation.annotation_id,
                Annotation.annotator,
                Annotation.concepts,
            )
            .where(Annotation.valid)
            .order_by(Annotation.annotation_id)
        ):
            annotations[(ann.sae_id, ann.feature)].append(ann)
    records = []
    for row in rows:
        status = "stale" if row.id in stale else row.status
        if status != "accepted" and not include_unaccepted:
            continue
        sae = saes.get(row.sae_id)
        details = dict(row.details) if row.details else None
        imported = details.pop(_IMPORTED, None) if details else None
        record = ExportRecord(
            sae_id=row.sae_id,
            index=row.feature,
            explanation=row.text,
            concepts=list(row.concepts),
            source=row.source,
            status=status,
            layer=sae.layer if sae else None,
            d_sae=sae.d_sae if sae else None,
            model=(sae.model if sae and sae.model else model),  # a reference-only SAE: its own
            author=row.author,
            model_version=row.model_version,
            confidence=row.confidence,
            probability=row.probability,
            stage=(details or {}).get("stage") if row.source == "auto" else None,
            bound=(details or {}).get("bound") if row.source == "auto" else None,
            created_at=_iso(row.created_at),
            scores=scores.get(row.id, []),
            details=details or None,
        )
        if imported is not None:
            for name, value in imported.items():
                setattr(record, name, value)
        elif row.source == "human":
            _human_provenance(record, tasks[(row.sae_id, row.feature)], annotations)
        if record.kappa is None and row.source == "human" and kappas:
            known = [kappas[c] for c in record.concepts if c in kappas]
            record.kappa = known[0] if known else None
        records.append(record)
    return records


def _human_provenance(
    record: ExportRecord,
    tasks: list[Any],
    annotations: dict[tuple[str, int], list[Any]],
) -> None:
    """Label Studio ids and observed agreement of a human label, from its task's annotations."""
    if not tasks:
        return
    by_project = {t.project: t for t in tasks}
    task = by_project.get(record.model_version or "") or max(tasks, key=lambda t: t.pushed_at)
    anns = [
        a for a in annotations.get((record.sae_id, record.index), []) if a.project == task.project
    ]
    record.ls_project = task.project
    record.ls_task_id = task.task_id
    record.ls_annotation_ids = [a.annotation_id for a in anns]
    record.annotators = sorted({a.annotator for a in anns})
    if anns:
        gold = set(record.concepts)
        record.agreement = sum(set(a.concepts) == gold for a in anns) / len(anns)


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
                details[_IMPORTED] = imported
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


def require_sae(engine: Engine, sae_id: str | None) -> SaeRecord:
    """The SAE an import targets: the one named, else the selected one."""
    with Session(engine) as session:
        chosen = sae_id or selected_sae(session)
        if chosen is None:
            raise SafesailError("no SAE given and none selected: pass --sae ID")
        record = session.get(SaeRecord, chosen)
        if record is None:
            known = ", ".join(r.id for r in session.exec(select(SaeRecord))) or "none"
            raise SafesailError(f"unknown SAE '{chosen}' (SAEs here: {known})")
        return record
