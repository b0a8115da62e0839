"""Routing: the signals of every current explanation, the calibration fitted on the gold
features' agreement with the experts, and the statuses it decides (accept above the threshold,
queue the rest for humans; a gold feature's own explanation only measures, never accepted).

Reads explanations and scores from the database only, so rerunning after new labels
re-calibrates and re-routes without a single new explaining call.
"""

from __future__ import annotations

import numpy as np
from sqlmodel import Session, select

from safesail.db.contracts import (
    CalibrationReport,
    LearnerPredictions,
    PredictedLabel,
    read_record,
    write_record,
)
from safesail.db.queries import chunked
from safesail.db.tables import Explanation, Feature, Score, session_scope
from safesail.errors import SafesailError
from safesail.explainer.calibration import SIGNALS, Calibration, fit_calibration, signal_matrix
from safesail.explainer.context import RunContext
from safesail.explainer.explainers import Evidence, GoldShot, nearest_shots
from safesail.explainer.materials import Gold, feature_evidence, gold_labels, profile
from safesail.explainer.report import calibration_report
from safesail.explainer.scorers import text_similarity
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

NEIGHBOURS = 3
"""Nearest gold features whose labels the neighbours_agree signal compares with."""


def signals(
    row: Explanation,
    scores: dict[str, float],
    learner: dict[int, PredictedLabel],
    feature: Feature,
    neighbours: list[Gold],
    evidence: Evidence,
) -> dict[str, float | None]:
    """Everything calibration may learn agreement from: the scorers, the explainer's own
    confidence, the active learner, triage, the labels of the nearest gold features, and the
    corpus evidence of the shown texts (does the chosen concept match what it points to)."""
    primary = row.concepts[0]
    prediction = learner.get(row.feature)
    out: dict[str, float | None] = {s: scores.get(s) for s in SIGNALS}
    out["confidence"] = row.confidence
    out["learner_probability"] = float(prediction.probability) if prediction else None
    out["learner_agrees"] = float(primary in prediction.concepts) if prediction else None
    out["triage_agrees"] = float(primary == feature.concept) if feature.concept else None
    out["triage_precision"] = feature.precision
    out["neighbours_agree"] = (
        float(np.mean([primary in g.concepts for g in neighbours])) if neighbours else None
    )
    out["says_safety"] = float(primary not in (BENIGN, UNINTERPRETABLE))
    leading = evidence.leading()
    out["evidence_agrees"] = None if leading is None else float(primary == leading)
    out["evidence_share"] = (
        None if primary == UNINTERPRETABLE else evidence.shares.get(primary, 0.0)
    )
    return out


def agrees(row: Explanation, gold: Gold, min_similarity: float) -> tuple[bool, float | None]:
    """Concept match (the explanation's main concept is one of the experts') and, when the
    experts wrote a text, an explanation that resembles it."""
    if row.concepts[0] not in gold.concepts:
        return False, None
    if not min_similarity or not gold.text.strip():
        return True, None
    similarity = text_similarity(row.text, gold.text)
    return similarity >= min_similarity, similarity


def route(ctx: RunContext) -> CalibrationReport:
    """Calibrate on the gold features and route every explanation of this run's version;
    stores the statuses and the CalibrationReport in one transaction and returns the report."""
    sae_id = ctx.sae_id
    with Session(ctx.ws.engine) as session:
        gold = gold_labels(session, sae_id)
        rows = session.exec(
            select(Explanation).where(
                Explanation.sae_id == sae_id,
                Explanation.source == "auto",
                Explanation.model_version == ctx.version,
                Explanation.status != "failed",
            )
        ).all()
        ids = [r.id for r in rows]
        scores: dict[int, dict[str, float]] = {}
        for part in chunked(ids):
            for s in session.exec(select(Score).where(Score.explanation_id.in_(part))):
                scores.setdefault(s.explanation_id, {})[s.scorer] = s.value
        features = {
            f.index: f
            for part in chunked(sorted({r.feature for r in rows} | set(gold)))
            for f in session.exec(
                select(Feature).where(Feature.sae_id == sae_id, Feature.index.in_(part))
            )
        }
        predictions = read_record(session, LearnerPredictions)
        evidence = feature_evidence(session, list(features.values()), ctx.config)
    # in-sample predictions of gold features would teach "the learner agrees" = "the expert
    # agrees": LearnerPredictions.usable_for keeps only held-out (out-of-fold) ones
    learner = predictions.usable_for(sae_id) if predictions is not None else {}
    pool = [
        GoldShot(f, profile(features[f], ctx.concepts), [], g.concepts, g.text, g.confidence)
        for f, g in gold.items()
        if f in features
    ]
    signal_rows = {
        r.id: signals(
            r,
            scores.get(r.id, {}),
            learner,
            features[r.feature],
            [
                gold[n.feature]
                for n in nearest_shots(
                    profile(features[r.feature], ctx.concepts), pool, NEIGHBOURS, r.feature
                )
            ],
            evidence[r.feature],
        )
        for r in rows
    }
    gold_rows = [r for r in rows if r.feature in gold]
    verdicts = {r.id: agrees(r, gold[r.feature], ctx.config.min_text_similarity) for r in gold_rows}
    calibration, error = _fit(ctx, gold_rows, signal_rows, verdicts)
    open_rows = [r for r in rows if r.feature not in gold]
    probs = (
        dict(
            zip(
                [r.id for r in open_rows],
                calibration.predict(signal_matrix([signal_rows[r.id] for r in open_rows])),
                strict=True,
            )
        )
        if calibration is not None and open_rows
        else {}
    )
    threshold = calibration.threshold.threshold if calibration is not None else float("inf")
    # gold features keep their out-of-fold P(agree): the coverage-vs-agreement curve's points
    held_out = (
        dict(zip([r.id for r in gold_rows], calibration.oof.tolist(), strict=True))
        if calibration is not None
        else {}
    )
    accepted = queued = 0
    with session_scope(ctx.ws.engine) as session:
        for r in rows:
            row = session.get(Explanation, r.id)
            details = dict(row.details or {})
            details["signals"] = signal_rows[r.id]
            details["evidence"] = evidence[r.feature].line()
            if r.feature in gold:
                agree, similarity = verdicts[r.id]
                row.status = "queued" if agree else "rejected"
                details.update(yardstick=True, agrees=agree, text_similarity=similarity)
                row.probability = held_out.get(r.id)
            else:
                p = probs.get(r.id)
                row.probability = None if p is None else float(p)
                row.status = "accepted" if p is not None and p >= threshold else "queued"
                accepted += row.status == "accepted"
                queued += row.status == "queued"
                details.pop("yardstick", None)
            row.details = details
            session.add(row)
        report = calibration_report(
            ctx, calibration, error, accepted=accepted, queued=queued, n_gold=len(gold_rows)
        )
        write_record(session, report)
    return report


def _fit(
    ctx: RunContext,
    gold_rows: list[Explanation],
    signal_rows: dict[int, dict[str, float | None]],
    verdicts: dict[int, tuple[bool, float | None]],
) -> tuple[Calibration | None, str | None]:
    """The calibration on the gold features' signals and verdicts, or why there is none."""
    x_gold = signal_matrix([signal_rows[r.id] for r in gold_rows])
    y_gold = np.array([verdicts[r.id][0] for r in gold_rows], dtype=int)
    config = ctx.config
    try:
        calibration = fit_calibration(
            x_gold,
            y_gold,
            target=config.target,
            min_gold=config.min_gold,
            folds=config.folds,
            z=config.confidence_z,
            seed=config.seed,
        )
    except SafesailError as exc:
        return None, str(exc)
    return calibration, None
