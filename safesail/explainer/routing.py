"""Routing: the trust-or-escalate cascade over the stored answers. Stages in order of cost:

1. `concept_model`: the active learner's calibrated prediction (`LearnerPredictions`,
   out-of-fold for the labeled features) where the reader's own reading agrees with it
   (`concept_stage.concept_model_score`); no LLM call decides, the sentence of an accepted concept is drafted
   from the feature's marked tokens;
2. `llm`: the explainer's LLM asked `votes` times, the share of answers naming the most common
   concept its confidence;
3. `escalate`: the same on a stronger endpoint, when one is configured;
4. people: every routed feature no stage accepts is in the `HumanQueue` record.

Each stage's threshold comes from fixed-sequence testing (calibration.py) on the gold features
that reach it, at delta / stages, so one guarantee holds over all accepted features. An answer
agrees with the experts when its primary concept is one of theirs and, for a safety concept,
its sentence names a marked token and that concept (not another, not "no concept").

Reads answers from the database only, so rerunning after new labels or a new learner fit
re-routes without a single new LLM call. Acceptances of an earlier model, prompt or
calibration become `stale`: never counted as coverage, their features back in the human queue.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func
from sqlmodel import Session, select

from safesail.db.contracts import (
    CalibrationReport,
    HumanQueue,
    LearnerPredictions,
    PredictedLabel,
    QueuedFeature,
    read_record,
    write_record,
)
from safesail.db.queries import chunked
from safesail.db.tables import Explanation, Feature, LlmCall, session_scope
from safesail.explainer.agreement import agrees, draft_sentence
from safesail.explainer.calibration import Acceptance, GoldAnswer, cascade
from safesail.explainer.concept_stage import (
    concept_model_stage,
    concept_model_version,
    window_topics,
)
from safesail.explainer.context import RunContext
from safesail.explainer.materials import Gold, gold_labels, marked_tokens
from safesail.explainer.report import calibration_report
from safesail.explainer.stages import (
    CONCEPT_MODEL,
    ESCALATE,
    LLM,
    STALE,
    Plan,
    Stage,
    StageCost,
    is_safety,
)


def _llm_rows(session: Session, sae_id: str, version: str) -> dict[int, Explanation]:
    """The latest answer of this version per feature (failed ones included)."""
    rows = session.exec(
        select(Explanation)
        .where(
            Explanation.sae_id == sae_id,
            Explanation.source == "auto",
            Explanation.model_version == version,
        )
        .order_by(Explanation.created_at, Explanation.id)
    )
    return {r.feature: r for r in rows}


def plan(ctx: RunContext, routed: Iterable[int] = ()) -> Plan:
    """The cascade on what is stored now: the gold features, the learner's predictions and the
    LLM stages' current answers; `routed` adds features whose marked tokens the concept model
    needs for its sentences."""
    sae_id = ctx.sae_id
    with Session(ctx.ws.engine) as session:
        gold = gold_labels(session, sae_id)
        predictions = read_record(session, LearnerPredictions)
        llm_rows = {LLM: _llm_rows(session, sae_id, ctx.version)}
        if ctx.escalate_version is not None:
            llm_rows[ESCALATE] = _llm_rows(session, sae_id, ctx.escalate_version)
        wanted = set(gold) | set(routed) | {f for rows in llm_rows.values() for f in rows}
        features = [
            f
            for part in chunked(sorted(wanted))
            for f in session.exec(
                select(Feature).where(
                    Feature.sae_id == sae_id,
                    Feature.index.in_(part),
                    Feature.examples.is_not(None),
                )
            )
        ]
        fired = marked_tokens(session, features, ctx.config)
    safety = [c for c in ctx.labels if is_safety(c)]
    stages = []
    if predictions is not None:
        reads = {f.index for f in features}
        topics = window_topics(ctx.ws.engine, sae_id, sorted(reads), ctx.ws.taxonomy)
        stages += concept_model_stage(
            sae_id,
            predictions,
            gold,
            fired,
            topics,
            reads=reads,
            safety=safety,
            topic_share=ctx.config.topic_share,
        )
    for name, rows in llm_rows.items():
        version = ctx.version if name == LLM else str(ctx.escalate_version)
        stages.append(_llm_stage(name, version, rows, gold, fired, safety))
    acceptances = cascade(
        [s.gold for s in stages], target=ctx.config.target, delta=ctx.config.delta
    )
    accepted_at: dict[int, str] = {}
    for stage, acceptance in zip(stages, acceptances, strict=True):
        for f, c in stage.confidence.items():
            if f not in accepted_at and acceptance.accepts(c):
                accepted_at[f] = stage.name
    return Plan(stages, acceptances, accepted_at, gold, fired)


def _llm_stage(
    name: str,
    version: str,
    rows: dict[int, Explanation],
    gold: dict[int, Gold],
    fired: dict[int, list[str]],
    safety: list[str],
) -> Stage:
    """An LLM stage: its valid answers, their vote shares as confidence, and on its gold."""
    valid = {f: r for f, r in rows.items() if r.status != "failed" and r.concepts}
    share = {f: float((r.details or {}).get("vote_share", 0.0)) for f, r in valid.items()}
    return Stage(
        name,
        version,
        dict(valid),
        share,
        {
            f: GoldAnswer(
                share[f],
                agrees(r.concepts, r.text, gold[f], fired.get(f, []), safety),
            )
            for f, r in valid.items()
            if f in gold
        },
        set(rows),
    )


def routed_pool(ctx: RunContext, features: list[int] | None) -> list[int]:
    """The unlabeled features the cascade routes: the given ones (else the safety candidates
    with examples) and every feature with an automatic answer, gold features excluded."""
    with Session(ctx.ws.engine) as session:
        gold = set(gold_labels(session, ctx.sae_id))
        if features is None:
            features = list(
                session.exec(
                    select(Feature.index).where(
                        Feature.sae_id == ctx.sae_id,
                        Feature.candidate,
                        Feature.examples.is_not(None),
                    )
                )
            )
        answered = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == ctx.sae_id, Explanation.source == "auto"
                )
            )
        )
    return sorted((set(features) | answered) - gold)


def route(ctx: RunContext, features: list[int] | None = None) -> CalibrationReport:
    """Decide the cascade and store it in one transaction: statuses (accepted by the first
    stage whose threshold the feature reaches, queued otherwise, stale for acceptances of
    another version), the concept model's accepted explanations, the CalibrationReport and
    the HumanQueue; returns the report. `features`: the routed pool (default: the safety
    candidates), see `routed_pool`."""
    routed = routed_pool(ctx, features)
    decided = plan(ctx, routed)
    version = decided.version(ctx)
    current = {s.version for s in decided.stages}
    with session_scope(ctx.ws.engine) as session:
        rows = session.exec(
            select(Explanation).where(
                Explanation.sae_id == ctx.sae_id, Explanation.source == "auto"
            )
        ).all()
        latest: dict[tuple[int, str], Explanation] = {}
        for row in sorted(rows, key=lambda r: (r.created_at, r.id)):
            latest[(row.feature, row.model_version or "")] = row
        for row in rows:  # every acceptance is decided again below, or stale
            if row.status == "accepted":
                fresh = (
                    row.model_version in current and latest[(row.feature, row.model_version)] is row
                )
                row.status = "queued" if fresh else STALE
                session.add(row)
        for stage, acceptance in zip(decided.stages, decided.acceptances, strict=True):
            _store_stage(
                session, ctx.sae_id, stage, acceptance, decided, set(routed), latest, version
            )
        stale = {r.feature for r in rows if r.status == STALE} - set(decided.accepted_at)
        costs = _costs(session, ctx, decided, routed)
        report = calibration_report(ctx, decided, routed, version, len(stale), costs)
        write_record(session, report)
        write_record(session, _queue(ctx, decided, routed, version, rows, stale))
    return report


def _store_stage(
    session: Session,
    sae_id: str,
    stage: Stage,
    acceptance: Acceptance,
    decided: Plan,
    routed: set[int],
    latest: dict[tuple[int, str], Explanation],
    version: str,
) -> None:
    """One stage's rows: an LLM stage's answers get their status; the concept model's accepted
    features get (or keep) a row with the drafted sentence; gold rows only measure."""
    for f, answer in stage.answers.items():
        if f not in routed and f not in decided.gold:
            continue
        row = latest.get((f, stage.version))
        accepted = f in routed and decided.accepted_at.get(f) == stage.name
        if row is None:
            if not accepted or not isinstance(answer, PredictedLabel):
                continue
            row = Explanation(
                sae_id=sae_id,
                feature=f,
                source="auto",
                status="queued",
                concepts=list(answer.concepts),
                text=draft_sentence(answer.concepts, decided.fired.get(f, [])),
                confidence=float(answer.probability),
                author=CONCEPT_MODEL,
                model_version=stage.version,
            )
        details = dict(row.details or {})
        details.update(stage=stage.name, calibration=version)
        row.probability = stage.confidence.get(f)
        if f in decided.gold:
            agree = stage.gold[f].agrees if f in stage.gold else False
            row.status = "queued" if agree else "rejected"
            details.update(yardstick=True, agrees=agree)
            details.pop("bound", None)
        else:
            row.status = "accepted" if accepted else "queued"
            details.pop("yardstick", None)
            details.pop("agrees", None)
            details["bound"] = acceptance.bound if accepted else None
        row.details = details
        session.add(row)


def _costs(
    session: Session, ctx: RunContext, decided: Plan, routed: list[int]
) -> dict[str, StageCost]:
    """LLM tokens and seconds each stage spent on the routed features that reached it (the
    concept model calls no LLM; gold features' calls are the calibration's own cost)."""
    models = {LLM: ctx.model}
    if ctx.escalate is not None:
        models[ESCALATE] = ctx.escalate.resolved_model
    out = {}
    for stage in decided.stages:
        if stage.name not in models:
            out[stage.name] = StageCost(0, 0.0)
            continue
        reached = [f for f in routed if f in stage.asked and decided.reaches(f, stage.name)]
        tokens, seconds = 0, 0.0
        for part in chunked(reached):
            got = session.exec(
                select(
                    func.sum(LlmCall.prompt_tokens + LlmCall.completion_tokens),
                    func.sum(LlmCall.latency_s),
                ).where(
                    LlmCall.sae_id == ctx.sae_id,
                    LlmCall.model == models[stage.name],
                    LlmCall.feature.in_(part),
                )
            ).one()
            tokens += int(got[0] or 0)
            seconds += float(got[1] or 0.0)
        out[stage.name] = StageCost(tokens, round(seconds, 3))
    return out


def _queue(
    ctx: RunContext,
    decided: Plan,
    routed: list[int],
    version: str,
    rows: list[Explanation],
    stale: set[int],
) -> HumanQueue:
    """The routed features no stage accepts, each with why and the confidences it had."""
    failed = {
        r.feature
        for r in rows
        if r.status == "failed" and r.model_version in {s.version for s in decided.stages}
    }
    queued = []
    for f in routed:
        if f in decided.accepted_at:
            continue
        confidences = {
            s.name: round(s.confidence[f], 4) for s in decided.stages if f in s.confidence
        }
        answered = any(f in s.answers for s in decided.stages if s.name != CONCEPT_MODEL)
        reason = (
            "stale"
            if f in stale
            else "not accepted"
            if answered
            else "failed"
            if f in failed
            else "not explained"
        )
        queued.append(QueuedFeature(f, reason, confidences))
    return HumanQueue(sae_id=ctx.sae_id, calibration_version=version, features=queued)


def stale_now(session: Session, sae_id: str) -> set[int]:
    """Ids of the SAE's accepted automatic explanations made by the cascade that are no longer
    current although no routing has marked them yet: made under another calibration than the
    last report's, or by the concept model before the learner's last fit. Readers (status,
    exports) count none of them as coverage. Without a report for this SAE there is nothing
    to judge them by (none)."""
    report = read_record(session, CalibrationReport)
    if report is None or report.sae_id != sae_id:
        return set()
    predictions = read_record(session, LearnerPredictions)
    learner = concept_model_version(predictions) if predictions is not None else None
    rows = session.exec(
        select(Explanation.id, Explanation.model_version, Explanation.details).where(
            Explanation.sae_id == sae_id,
            Explanation.source == "auto",
            Explanation.status == "accepted",
        )
    ).all()
    out = set()
    for id_, model_version, details in rows:
        details = details or {}
        if "stage" not in details:
            continue
        if details.get("calibration") != report.calibration_version or (
            details["stage"] == CONCEPT_MODEL and model_version != learner
        ):
            out.add(id_)
    return out
