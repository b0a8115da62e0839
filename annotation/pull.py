"""Pull the annotations back from Label Studio, converging to its state, then retrain.

Every answer is kept as it came back (annotator, lead time, timestamps, raw result); one with
unknown or missing fields is kept aside as invalid with its problem, never dropped. An answer
deleted in Label Studio is removed here too. The touched features are adjudicated again
(annotation.adjudicate) and the learner, when a room offers one, is refit on the new labels.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlmodel import select

from annotation.adjudicate import adjudicate_features, naive_utc, summarize
from annotation.label_interface import CONCEPTS, CONFIDENCE, EXPLANATION, MAX_RATING
from annotation.project import ensure_project
from annotation.push import reconcile
from annotation.transport import ClientConfig, open_client
from safesail.db.contracts import LearnerFactory, Workspace, read_record, write_record
from safesail.db.labeling import AnnotationSummary
from safesail.db.tables import Annotation, LabelTask, lock, session_scope
from safesail.errors import SafesailError
from safesail.plugins import learner_factory
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


class PullResult(NamedTuple):
    project: str
    new: int
    updated: int
    invalid: int
    problems: list[str]
    features_labeled: int
    kappa: dict[str, dict[str, float | None]]  # concept -> {"cohen": ..., "fleiss": ...}
    learner: str
    deleted: int = 0  # annotations deleted in Label Studio since the last pull (removed here)


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def parse_result(raw: dict[str, Any], values: list[str]) -> tuple[dict[str, Any], str | None]:
    """An annotation's fields and the first problem found (None when valid)."""
    if raw.get("was_cancelled"):
        return {"concepts": [], "confidence": None, "explanation": ""}, "skipped by annotator"
    fields: dict[str, Any] = {"concepts": [], "confidence": None, "explanation": ""}
    problems = []
    for item in raw.get("result") or []:
        if not isinstance(item, dict):
            problems.append("result item is not an object")
            continue
        name, value = item.get("from_name"), item.get("value") or {}
        if name == CONCEPTS:
            fields["concepts"] = list(value.get("choices") or [])
        elif name == CONFIDENCE:
            fields["confidence"] = value.get("rating")
        elif name == EXPLANATION:
            fields["explanation"] = " ".join(str(t) for t in value.get("text") or []).strip()
        else:
            problems.append(f"unknown field '{name}'")
    concepts, confidence = fields["concepts"], fields["confidence"]
    unknown = [c for c in concepts if c not in values]
    if not concepts:
        problems.insert(0, "no concept chosen")
    elif unknown:
        problems.insert(0, f"unknown concept(s) {', '.join(map(str, unknown))}")
    elif len(concepts) > 1 and ({BENIGN, UNINTERPRETABLE} & set(concepts)):
        problems.insert(0, "'not safety-related'/'not interpretable' combined with other labels")
    if not isinstance(confidence, int | float) or not 1 <= confidence <= MAX_RATING:
        problems.append("missing or out-of-range confidence")
    return fields, (problems[0] if problems else None)


def pull(
    ws: Workspace,
    *,
    config: ClientConfig | None = None,
    retrain: bool = True,
    progress: bool = True,
    make_learner: LearnerFactory | None = None,
) -> PullResult:
    """Store new or changed annotations, adjudicate per feature, report agreement, retrain.
    `make_learner`: the learner factory a caller that pulls several times found once (None:
    look it up)."""
    client = open_client(ws, config)
    project_id, key = ensure_project(ws, client)
    reconcile(ws, client, project_id, key)
    values = ws.taxonomy.label_values()
    users = {
        u.id: u.email or u.username for u in client.call(lambda: list(client.sdk.users.list()))
    }

    def fetch() -> list[Any]:
        # every task, not only_annotated: a task whose answers were all deleted (or only
        # skipped) must still be seen to tell what is gone
        return list(client.sdk.tasks.list(project=project_id, fields="all", page_size=200))

    new = updated = 0
    touched: set[tuple[str, int]] = set()
    with session_scope(ws.engine) as session:
        # concurrent pulls of a project take turns, each reading Label Studio inside its turn:
        # an older snapshot applied after a newer one would delete the answers made between
        lock(session, f"label pull {key}")
        tasks = client.call(fetch)
        mapping = {
            t.task_id: t for t in session.exec(select(LabelTask).where(LabelTask.project == key))
        }
        stored = {
            a.annotation_id: a
            for a in session.exec(select(Annotation).where(Annotation.project == key))
        }
        seen: set[int] = set()
        for task in tasks:
            label_task = mapping.get(task.id)
            if label_task is None:
                continue  # a task not pushed by this workspace
            for raw in task.annotations or []:
                raw = dict(raw)
                seen.add(raw["id"])
                row = stored.get(raw["id"])
                changed = _parse_time(raw.get("updated_at"))
                if row is not None and naive_utc(row.updated_at) == naive_utc(changed):
                    continue
                fields, problem = parse_result(raw, values)
                who = raw.get("completed_by")
                who = who.get("id") if isinstance(who, dict) else who
                if row is None:
                    row = Annotation(project=key, annotation_id=raw["id"], task_id=task.id,
                                     sae_id=label_task.sae_id, feature=label_task.feature,
                                     annotator="", concepts=[])  # fmt: skip
                    new += 1
                else:
                    updated += 1
                row.annotator = users.get(who, str(who))
                row.concepts = fields["concepts"]
                row.confidence = fields["confidence"] if problem is None else None
                row.explanation = fields["explanation"]
                row.lead_time = raw.get("lead_time")
                row.created_at = _parse_time(raw.get("created_at"))
                row.updated_at = changed
                row.valid, row.problem, row.raw = problem is None, problem, raw
                session.add(row)
                touched.add((label_task.sae_id, label_task.feature))
        deleted = 0
        for annotation_id, row in stored.items():
            # gone from Label Studio (the task list is complete: every page, every task
            # of the project): removed here too, and its feature adjudicated again
            if annotation_id not in seen and row.task_id in mapping:
                session.delete(row)
                touched.add((row.sae_id, row.feature))
                deleted += 1
        session.flush()
        adjudicate_features(session, key, touched)
        summary = summarize(
            session, key, values, read_record(session, AnnotationSummary) or AnnotationSummary()
        )
        summary.last_pull = datetime.now(UTC).isoformat(timespec="seconds")
        write_record(session, summary)
    learner = (
        _retrain(ws, make_learner) if retrain and touched else "not retrained (no new answers)"
    )
    return PullResult(
        key,
        new,
        updated,
        summary.invalid,
        summary.problems,
        summary.features_labeled,
        {concept: asdict(k) for concept, k in summary.kappa.items()},
        learner,
        deleted,
    )


def _retrain(ws: Workspace, make_learner: LearnerFactory | None) -> str:
    """Refit the active learner on the human labels (skipped while no room offers one): a new
    one, built from the labels just stored."""
    try:
        factory = make_learner or learner_factory()
        if factory is None:
            return "not retrained (active_learning not installed)"
        report = factory(ws, None).fit()
    except SafesailError as exc:
        return f"not retrained: {exc}"
    f1 = "-" if report.macro_f1_heldout is None else f"{report.macro_f1_heldout:.3f}"
    return f"retrained on {report.n_labels} labels, held-out macro-F1 {f1}"
