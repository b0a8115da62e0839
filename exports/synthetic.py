"""Plausible labeling-loop and explainer rows (human labels with their Label Studio tasks and
annotations, automatic labels with scores and LLM calls, room records) for the benchmark and
the tests of the exports and the app, written through the same tables and contracts
(safesail.db.contracts) the real rooms use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.contracts import (
    CalibrationReport,
    CurvePoint,
    LearnerState,
    ReliabilityBin,
    StageReport,
    read_record,
    write_record,
)
from safesail.db.labeling import AnnotationSummary, ConceptKappa
from safesail.db.tables import (
    Annotation,
    Explanation,
    Feature,
    LabelTask,
    LlmCall,
    SaeRecord,
    Score,
    session_scope,
)

PROJECT = "http://127.0.0.1:8080#1"
LLM = "smollm2-135m-instruct"
CALIBRATION_VERSION = "synthetic"
"""The calibration the synthetic acceptances were made under (the report carries it too)."""


def populate(
    engine: Engine,
    sae_id: str,
    concepts: list[str],
    *,
    features: list[int] | None = None,
    seed: int = 0,
    meta: bool = True,
) -> dict[str, int]:
    """Label the given features (default: the SAE's candidates, else its first 40): a third by
    humans, a third auto-accepted, the rest queued / rejected / failed; returns counts."""
    rng = np.random.default_rng(seed)
    with Session(engine) as session:
        if features is None:
            features = list(
                session.exec(
                    select(Feature.index).where(Feature.sae_id == sae_id, Feature.candidate)
                )
            )
            features = features or list(range(min(40, session.get(SaeRecord, sae_id).d_sae)))
        concept_of = dict(
            session.exec(
                select(Feature.index, Feature.concept).where(Feature.sae_id == sae_id)
            ).all()
        )
        start_id = (
            session.exec(select(Explanation.id).order_by(Explanation.id.desc())).first() or 0
        ) + 1
    start = datetime(2025, 1, 6, 9, tzinfo=UTC)
    explanations, scores, tasks, annotations, calls = [], [], [], [], []
    counts = {"human": 0, "auto_accepted": 0, "auto_other": 0}
    for n, feature in enumerate(features):
        concept = concept_of.get(feature) or concepts[n % len(concepts)]
        when = start + timedelta(days=n % 5, minutes=n)
        eid = start_id + n
        text = f"tokens about {concept.replace('_', ' ')} (feature {feature})"
        kind = n % 3
        row = {
            "id": eid,
            "sae_id": sae_id,
            "feature": feature,
            "concepts": [concept],
            "text": text,
            "created_at": when,
            "details": None,
            "confidence": None,
            "probability": None,
        }
        if kind == 0:
            task_id = 1000 + n
            row |= {
                "source": "human",
                "status": "accepted",
                "author": "alice;bob",
                "model_version": PROJECT,
                "confidence": 4.0,
            }
            tasks.append(
                {
                    "project": PROJECT,
                    "sae_id": sae_id,
                    "feature": feature,
                    "task_id": task_id,
                    "batch": n // 10,
                    "strategy": "uncertainty",
                    "query_score": float(rng.random()),
                    "annotators_wanted": 2,
                    "pushed_at": when - timedelta(hours=2),
                }
            )
            for k, who in enumerate(("alice", "bob")):
                agrees = k == 0 or rng.random() < 0.8
                annotations.append(
                    {
                        "project": PROJECT,
                        "annotation_id": 5000 + 2 * n + k,
                        "task_id": task_id,
                        "sae_id": sae_id,
                        "feature": feature,
                        "annotator": who,
                        "concepts": [concept if agrees else "benign"],
                        "confidence": 4.0,
                        "explanation": text,
                        "lead_time": float(20 + rng.random() * 60),
                        "created_at": when - timedelta(minutes=30),
                        "updated_at": when - timedelta(minutes=30),
                        "valid": True,
                        "raw": {"id": 5000 + 2 * n + k},
                        "pulled_at": when,
                    }
                )
            counts["human"] += 1
            agrees = bool(rng.random() < 0.75)  # the explainer's held-out label on a gold feature
            noise = 0.3 * rng.standard_normal()
            explanations.append(
                row
                | {
                    "id": start_id + len(features) + n,
                    "source": "auto",
                    "status": "rejected",
                    "concepts": [concept if agrees else "benign"],
                    "text": f"draft: {text}",
                    "author": LLM,
                    "model_version": f"{LLM}/explain-v1",
                    "confidence": None,
                    "probability": float(np.clip((0.8 if agrees else 0.3) + noise, 0, 1)),
                    "details": {"heldout": True},
                }
            )
        else:
            status = "accepted" if kind == 1 else ("queued", "rejected", "failed")[(n // 3) % 3]
            probability = (
                float(0.85 + 0.1 * rng.random()) if kind == 1 else float(rng.random() * 0.6)
            )
            row |= {
                "source": "auto",
                "status": status,
                "author": LLM,
                "model_version": f"{LLM}/explain-v1",
                "confidence": float(rng.random()),
                "probability": probability,
                "details": (
                    {"reason": "parse error"}
                    if status == "failed"
                    else {
                        "stage": "llm",
                        "calibration": CALIBRATION_VERSION,
                        "vote_share": probability,
                        "bound": 0.91 if status == "accepted" else None,
                    }
                ),
            }
            for scorer in ("detection", "simulation"):
                scores.append(
                    {
                        "explanation_id": eid,
                        "scorer": scorer,
                        "value": float(rng.random()),
                        "model": LLM,
                        "prompt_version": "v1",
                        "details": None,
                        "created_at": when,
                    }
                )
            for step in ("explain", "detection", "simulation"):
                calls.append(
                    {
                        "key": f"{sae_id}-{feature}-{step}-{seed}",
                        "model": LLM,
                        "step": step,
                        "sae_id": sae_id,
                        "feature": feature,
                        "prompt_tokens": int(rng.integers(300, 900)),
                        "completion_tokens": int(rng.integers(10, 60)),
                        "latency_s": float(rng.random() * 2),
                        "cost_usd": 0.0,
                        "response": "",
                        "created_at": when,
                    }
                )
            counts["auto_accepted" if kind == 1 else "auto_other"] += 1
        explanations.append(row)
    with session_scope(engine) as session:
        for table, rows in (
            (Explanation, explanations),
            (Score, scores),
            (LabelTask, tasks),
            (Annotation, annotations),
            (LlmCall, calls),
        ):
            if rows:
                session.execute(insert(table.__table__), rows)
        if meta:
            _room_meta(session, concepts, len(tasks), rng)
    return counts


def _room_meta(session: Session, concepts: list[str], n_human: int, rng: np.random.Generator):
    """The records the labeling, learner and explainer rooms write (each kept if present)."""
    if read_record(session, LearnerState) is None:
        curve = [CurvePoint(2, None)] + [
            CurvePoint(n, round(0.3 + 0.5 * (1 - np.exp(-n / 40)), 3)) for n in (5, 10, 20, 40, 60)
        ]
        write_record(
            session,
            LearnerState(
                n_labels=n_human,
                macro_f1_heldout=curve[-1].macro_f1,
                strategy="uncertainty",
                label_distribution={c: int(rng.integers(1, 9)) for c in concepts},
                curve=curve,
            ),
        )
    if read_record(session, AnnotationSummary) is None:
        write_record(
            session,
            AnnotationSummary(
                url=PROJECT.split("#")[0],
                project=1,
                tasks=n_human,
                kappa={
                    c: ConceptKappa(cohen=round(float(0.4 + 0.5 * rng.random()), 3), fleiss=None)
                    for c in concepts
                },
            ),
        )
    if read_record(session, CalibrationReport) is None:
        reliability = [
            ReliabilityBin(
                lo=round(float(lo), 2),
                hi=round(float(lo) + 0.2, 2),
                n=int(rng.integers(5, 30)),
                mean_probability=round(float(lo) + 0.1, 3),
                agreement=round(float(np.clip(lo + 0.1 + 0.1 * rng.standard_normal(), 0, 1)), 3),
            )
            for lo in np.linspace(0, 0.8, 5)
        ]
        stage = StageReport(
            name="llm",
            model_version=f"{LLM}/explain-v1",
            delta=0.1,
            threshold=0.85,
            n_gold=n_human,
            gold_accepted=min(n_human, 30),
            gold_errors=0,
            p_value=0.04,
            bound=0.91,
            needed=22,
            reliability=reliability,
        )
        write_record(
            session,
            CalibrationReport(
                target=0.9,
                delta=0.1,
                calibration_version=CALIBRATION_VERSION,
                coverage=0.5,
                n_gold=n_human,
                stages=[stage],
            ),
        )
