"""From the stored annotations to each feature's one human label, and the agreement summary.

A pull stores every answer as it came back (Annotation rows); this module decides what they
mean: per feature, the valid latest answer of each annotator is adjudicated
(annotation.agreement's rule) into one accepted Explanation of the project, withdrawn when no
valid answer is left; per project, the counts and the kappas that `AnnotationSummary` reports.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlmodel import Session, select

from annotation.agreement import ADJUDICATION_RULE, Answer, adjudicate, kappa_per_concept
from annotation.label_interface import MAX_RATING
from safesail.db.labeling import AnnotationSummary, ConceptKappa
from safesail.db.queries import human_labels
from safesail.db.tables import Annotation, Explanation

WITHDRAWN = "withdrawn"
"""Status of a human label whose answers in Label Studio all became invalid or were deleted."""


def naive_utc(value: datetime | None) -> datetime | None:
    """SQLite drops tzinfo: compare timestamps as naive UTC."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _when(row: Annotation) -> tuple[datetime, int]:
    """Sort key: last change (naive UTC, as SQLite returns it), then id."""
    return (naive_utc(row.updated_at) or datetime(1970, 1, 1), row.annotation_id)


def adjudicate_features(session: Session, key: str, touched: set[tuple[str, int]]) -> None:
    """Each touched feature's human label follows its valid latest answers in Label Studio: one
    accepted Explanation of this project, updated when the answers change, withdrawn when none
    is left valid (all invalid, skipped or deleted); the label it updates is the one
    safesail.db.queries.human_labels picks (the latest of this project)."""
    for sae_id, feature in sorted(touched):
        rows = session.exec(
            select(Annotation).where(
                Annotation.project == key,
                Annotation.sae_id == sae_id,
                Annotation.feature == feature,
                Annotation.valid,
            )
        ).all()
        latest: dict[str, Annotation] = {}
        for row in sorted(rows, key=_when):
            latest[row.annotator] = row
        mine = human_labels(session, sae_id, features=[feature], status=None, project=key)
        existing = mine.get(feature)
        if not latest:
            # no valid answer left: the feature is unlabeled again (its old label withdrawn)
            if existing is not None and existing.status == "accepted":
                existing.status = WITHDRAWN
                existing.details = {
                    **(existing.details or {}),
                    "reason": "no valid answer left in Label Studio",
                    "withdrawn_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                session.add(existing)
            continue
        answers = [
            Answer(
                a.annotator,
                list(a.concepts),
                float(a.confidence or 0),
                a.explanation,
                _when(a)[0].timestamp(),
            )
            for a in latest.values()
        ]
        result = adjudicate(answers)
        label = existing or Explanation(
            sae_id=sae_id, feature=feature, source="human", status="accepted", concepts=[]
        )
        label.status = "accepted"
        label.created_at = datetime.now(UTC)  # the latest decision: human_labels' tie rule
        label.concepts = result.concepts
        label.text = result.explanation
        label.confidence = result.confidence / MAX_RATING
        label.author = ", ".join(result.annotators)
        label.model_version = key
        label.details = {
            "rule": ADJUDICATION_RULE,
            "reason": result.reason,
            "agreed": result.agreed,
            "annotation_ids": sorted(a.annotation_id for a in latest.values()),
        }
        session.add(label)


def summarize(
    session: Session, key: str, values: list[str], into: AnnotationSummary
) -> AnnotationSummary:
    """`into` with the project's answer counts, problems and per-concept agreement filled in
    (the project fields and last_pull kept)."""
    rows = session.exec(select(Annotation).where(Annotation.project == key)).all()
    invalid = [r for r in rows if not r.valid]
    per_feature: dict[int, dict[str, list[str]]] = {}
    for r in sorted(rows, key=_when):
        if r.valid:
            per_feature.setdefault(r.feature, {})[r.annotator] = r.concepts
    items = [[answers[a] for a in sorted(answers)] for answers in per_feature.values()]
    kappa = {
        concept: ConceptKappa(cohen=k["cohen"], fleiss=k["fleiss"])
        for concept, k in kappa_per_concept(items, values).items()
    }
    cohen = [k.cohen for k in kappa.values() if k.cohen is not None]
    fleiss = [k.fleiss for k in kappa.values() if k.fleiss is not None]
    return replace(
        into,
        annotations=len(rows),
        invalid=len(invalid),
        problems=[
            f"task {r.task_id} (annotation {r.annotation_id}): {r.problem}" for r in invalid[:20]
        ],
        features_labeled=len(per_feature),
        overlap_items=sum(1 for i in items if len(i) >= 2),
        kappa=kappa,
        cohen_kappa_mean=round(sum(cohen) / len(cohen), 4) if cohen else None,
        fleiss_kappa_mean=round(sum(fleiss) / len(fleiss), 4) if fleiss else None,
        adjudication=ADJUDICATION_RULE,
    )
