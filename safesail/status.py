"""`safesail status --json`: the workspace's progress as one JSON object.

Its keys are a contract: the app, the tests and people's scripts poll it. `features`,
`features_with_examples`, `safety_candidates`, `saes`, `selected_sae`, `labels` and `coverage`
stay; keys may be added, never removed. Each of `saes` carries `core` (SAEBench core metrics,
safesail.selection.core_metrics) and `pre_explanation` (Safe-SAIL's metric, safesail.selection.contrastive), null
until `select` has measured them, and `triage` (candidates per concept, null until triaged).
`landscape` maps each layer of the selected configuration (`Workspace.landscape`) that triage
has run on to its candidates per concept: Safe-SAIL's view across depth. The rooms report their
own progress through the typed records of `ROOM_RECORDS`, each under its KEY (null until the room ran), so
status needs to know nothing of a room but its record.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from safesail.db.contracts import (
    CalibrationReport,
    HumanQueue,
    LearnerState,
    MetaRecord,
    Workspace,
    read_record,
)
from safesail.db.labeling import AnnotationSummary
from safesail.db.queries import COVERAGE_STATES, coverage_states, selected_sae
from safesail.db.tables import CorpusText, Explanation, Feature, LlmCall

COVERED = frozenset(COVERAGE_STATES[:2])
"""Coverage states that count as explained (human-labeled, auto-accepted)."""

ROOM_RECORDS: tuple[type[MetaRecord], ...] = (LearnerState, AnnotationSummary, CalibrationReport)
"""The records `status` reports as they are, under their KEY (null until the room ran)."""


def _pre_explanation(selection: dict | None) -> dict[str, Any] | None:
    """An SAE's Safe-SAIL pre-explanation figures (safesail.selection.contrastive): the index, L0_t and
    per concept its I_CDF and L0_t (the stored per-concept details stay in the database)."""
    pre = (selection or {}).get("pre_explanation")
    if pre is None:
        return None
    return {
        "index": pre["index"],
        "l0_t": pre["l0_t"],
        "threshold": pre["threshold"],
        "concepts": {
            c: {"i_cdf": v["i_cdf"], "l0_t": v["l0_t"]} for c, v in pre["concepts"].items()
        },
    }


def workspace_status(ws: Workspace) -> dict[str, Any]:
    """The `safesail status --json` object (see the module docstring for its keys)."""
    from safesail.explainer.routing import stale_now
    from safesail.triage.text import reason_kind

    with Session(ws.engine) as session:
        sae_id = selected_sae(session)
        features = select(func.count()).select_from(Feature).where(Feature.sae_id == sae_id)
        n_features = session.exec(features).one()
        with_examples = session.exec(features.where(Feature.examples.is_not(None))).one()
        states = coverage_states(session, sae_id) if sae_id is not None else {}
        rejected = session.exec(
            select(Feature.triage_reason).where(
                Feature.sae_id == sae_id, Feature.triage_reason.is_not(None)
            )
        ).all()
        labels = session.exec(
            select(
                Explanation.id, Explanation.feature, Explanation.source, Explanation.status
            ).where(Explanation.sae_id == sae_id)
        ).all()
        stale = stale_now(session, sae_id) if sae_id is not None else set()
        queue = read_record(session, HumanQueue)
        n_texts = session.exec(select(func.count()).select_from(CorpusText)).one()
        cost = session.exec(
            select(
                func.count(),
                func.sum(LlmCall.prompt_tokens + LlmCall.completion_tokens),
                func.sum(LlmCall.cost_usd),
            )
        ).one()
        records = {cls.KEY: read_record(session, cls) for cls in ROOM_RECORDS}
    rooms = _rooms(ws, records, stale, queue, sae_id)
    # a stale acceptance is no coverage: its feature is open again
    labels = [(f, src, "stale" if i in stale else st) for i, f, src, st in labels]
    accepted = [(f, source) for f, source, st in labels if st == "accepted"]
    explained = {f for f, _ in accepted}
    open_auto = {f for f, src, st in labels if src == "auto" and st != "accepted"} - explained
    answered = {f for f, src, st in labels if src == "auto" and st != "failed"}
    only_failed = {f for f, src, st in labels if src == "auto" and st == "failed"} - answered
    return {
        "workspace": str(ws.config.workspace),
        "model": ws.model_name,
        "corpus_texts": n_texts,
        "features": n_features,
        "features_with_examples": with_examples,
        "safety_candidates": len(states),
        "candidates_per_concept": dict(Counter(c for c, _ in states.values()).most_common()),
        "triage_rejected": dict(Counter(reason_kind(r) for r in rejected).most_common()),
        "saes": [_sae_row(r) for r in ws.saes()],
        "landscape": ws.landscape(),
        "selected_sae": sae_id,
        "labels": {
            "human": sum(1 for _, s in accepted if s == "human"),
            "auto_accepted": sum(1 for _, s in accepted if s == "auto"),
            "prior": sum(1 for _, s in accepted if s == "prior"),
            "queued_for_humans": len(open_auto),
            "failed_only": len(only_failed),  # `explain --retry-failed` asks again
        },
        "llm": {
            "calls": cost[0],
            "tokens": int(cost[1] or 0),
            "cost_usd": float(cost[2] or 0.0),
        },
        **rooms,
        "coverage": (
            sum(1 for _, state in states.values() if state in COVERED) / len(states)
            if states
            else 0.0
        ),
    }


def _sae_row(r: Any) -> dict[str, Any]:
    """One of `saes`: an SAE's identity and what selection and triage found."""
    return {
        "id": r.id,
        "layer": r.layer,
        "d_sae": r.d_sae,
        "k": r.k,
        "source": r.source,
        "collected": r.collected,
        "selection_score": r.selection_score,
        "core": r.core,
        "pre_explanation": _pre_explanation(r.selection),
        "triage": r.triage,
    }


def _rooms(
    ws: Workspace,
    records: dict[str, Any],
    stale: set[int],
    queue: HumanQueue | None,
    sae_id: str | None,
) -> dict[str, Any]:
    """Each room's record under its KEY; the calibration report also judged by the readers
    (where known), with its stale acceptances and the human queue's reasons."""
    rooms: dict[str, Any] = {key: r.to_dict() if r else None for key, r in records.items()}
    if rooms.get(CalibrationReport.KEY) is not None:  # judged by the readers too, where known
        from safesail.reference.check import reference_agreement

        rooms[CalibrationReport.KEY]["reference_agreement"] = reference_agreement(ws)
        # acceptances a later learner fit or calibration made stale, not yet re-routed
        rooms[CalibrationReport.KEY]["stale_unrouted"] = len(stale)
        rooms[CalibrationReport.KEY]["human_queue"] = (
            dict(Counter(q.reason for q in queue.features))
            if queue is not None and queue.sae_id == sae_id
            else None
        )
    return rooms
