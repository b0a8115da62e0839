"""The gold set read out of the workspace database as `ExportRecord`s: explanations with their
scores, the model that wrote them, and for human labels the Label Studio task, annotations and
agreement they came from; what an earlier import could not store in its own tables is restored
from the explanation's details."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from exports.records import GOLD_SOURCES, IMPORTED, ExportRecord
from safesail.causal.config import SCORER as CAUSAL_SCORER
from safesail.db.contracts import read_record
from safesail.db.labeling import AnnotationSummary
from safesail.db.queries import model_name
from safesail.db.tables import Annotation, Explanation, LabelTask, SaeRecord, Score


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
        imported = details.pop(IMPORTED, None) if details else None
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
