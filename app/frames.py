"""The progress figures' data as plain frames (no Streamlit here, so each figure is testable
on its own): coverage of the safety candidates, labels and LLM cost over time, what is still
needed, the learner's curve and the explainer's calibration. Room records come typed from
`app.reads`; the coverage rule is `safesail.db.queries.coverage_states`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.reads import annotation_summary, calibration_report, learner_state
from safesail.db.queries import COVERAGE_STATES, coverage_states, selected_sae
from safesail.db.tables import Explanation, LlmCall


def coverage(engine: Engine) -> pd.DataFrame:
    """Safety candidates of the selected SAE per concept and coverage state (concept, state,
    features)."""
    with Session(engine) as session:
        sae_id = selected_sae(session)
        states = coverage_states(session, sae_id) if sae_id is not None else {}
    counts = Counter(states.values())
    return pd.DataFrame(
        [(c, s, n) for (c, s), n in sorted(counts.items())],
        columns=["concept", "state", "features"],
    )


def labels_per_day(engine: Engine) -> pd.DataFrame:
    """Accepted labels per day and source (day, source, labels)."""
    with Session(engine) as session:
        rows = session.exec(
            select(Explanation.created_at, Explanation.source).where(
                Explanation.status == "accepted", Explanation.source != "prior"
            )
        ).all()
    counts = Counter((when.date().isoformat(), source) for when, source in rows)
    return pd.DataFrame(
        [(d, s, n) for (d, s), n in sorted(counts.items())], columns=["day", "source", "labels"]
    )


def llm_cost(engine: Engine) -> pd.DataFrame:
    """LLM calls, tokens and dollars per step and model."""
    with Session(engine) as session:
        rows = session.exec(
            select(
                LlmCall.step,
                LlmCall.model,
                LlmCall.prompt_tokens,
                LlmCall.completion_tokens,
                LlmCall.cost_usd,
            )
        ).all()
    frame = pd.DataFrame(rows, columns=["step", "model", "prompt", "completion", "cost_usd"])
    if frame.empty:
        return pd.DataFrame(columns=["step", "model", "calls", "tokens", "cost_usd"])
    frame["tokens"] = frame["prompt"] + frame["completion"]
    frame["cost_usd"] = frame["cost_usd"].fillna(0.0)
    return (
        frame.groupby(["step", "model"])
        .agg(calls=("tokens", "size"), tokens=("tokens", "sum"), cost_usd=("cost_usd", "sum"))
        .reset_index()
    )


def cost_per_accepted(engine: Engine) -> dict[str, float] | None:
    """Tokens and dollars spent per auto-accepted feature (all LLM calls / accepted; stale
    acceptances do not count)."""
    from safesail.explainer.routing import stale_now

    cost = llm_cost(engine)
    with Session(engine) as session:
        rows = session.exec(
            select(Explanation.id, Explanation.sae_id, Explanation.feature).where(
                Explanation.source == "auto", Explanation.status == "accepted"
            )
        ).all()
        stale = set().union(*(stale_now(session, s) for s in {r.sae_id for r in rows}))
        accepted = len({(r.sae_id, r.feature) for r in rows if r.id not in stale})
    if cost.empty:
        return None
    return {
        "accepted": accepted,
        "tokens": float(cost["tokens"].sum()) / max(accepted, 1),
        "cost_usd": float(cost["cost_usd"].sum()) / max(accepted, 1),
    }


class Estimate(NamedTuple):
    """Labels still needed, two ways."""

    unexplained: int
    """Safety candidates with no accepted label and no automatic attempt yet."""
    queued: int
    """Candidates the explainer routed to humans."""
    auto_rate: float | None
    """Share of explained candidates the explainer got accepted (None: no automatic labels)."""
    human_needed: int
    """Queued + the unexplained ones the explainer will not get accepted at its current rate."""
    to_target: int | None
    """Extra human labels the learner needs to reach target_f1 (log fit of its curve)."""
    target_f1: float


def labels_needed(engine: Engine, target_f1: float = 0.8) -> Estimate:
    frame = coverage(engine)
    human, auto, queued, unexplained = (
        int(frame.loc[frame.state == s, "features"].sum()) for s in COVERAGE_STATES
    )
    tried = auto + queued
    rate = auto / tried if tried else None
    needed = queued + math.ceil(unexplained * (1 - (rate or 0.0)))
    return Estimate(
        unexplained, queued, rate, needed, _to_target(learner_curve(engine), target_f1), target_f1
    )


def _to_target(curve: pd.DataFrame, target: float) -> int | None:
    """Labels to add until F1 = a + b·ln(labels) reaches target (None: too few points, no
    upward trend, or already there)."""
    if len(curve) < 3:
        return None
    b, a = np.polyfit(np.log(curve["labels"].clip(lower=1)), curve["f1"], 1)
    have = int(curve["labels"].max())
    if curve["f1"].iloc[-1] >= target:
        return 0
    if b <= 0:
        return None
    return max(0, math.ceil(math.exp((target - a) / b)) - have)


def learner_curve(engine: Engine) -> pd.DataFrame:
    """The active learner's held-out macro-F1 per number of labels (points without an F1 yet
    left out)."""
    state = learner_state(engine)
    points = [
        (float(p.n_labels), float(p.macro_f1))
        for p in (state.curve if state else [])
        if p.macro_f1 is not None
    ]
    return pd.DataFrame(points, columns=["labels", "f1"])


def label_distribution(engine: Engine) -> pd.DataFrame:
    state = learner_state(engine)
    dist = state.label_distribution if state else {}
    return pd.DataFrame(sorted(dist.items()), columns=["label", "features"])


def kappa(engine: Engine) -> pd.DataFrame:
    """Annotator agreement per concept (Cohen's kappa, else Fleiss')."""
    summary = annotation_summary(engine)
    values = summary.kappa_per_concept() if summary else {}
    return pd.DataFrame(sorted(values.items()), columns=["concept", "kappa"])


def reliability(engine: Engine) -> pd.DataFrame:
    """Per cascade stage, its confidence bins on its gold: mean confidence vs observed
    agreement (and bin size)."""
    report = calibration_report(engine)
    rows = [
        (s.name, b.mean_probability, b.agreement, b.n)
        for s in (report.stages if report else [])
        for b in s.reliability
    ]
    frame = pd.DataFrame(rows, columns=["stage", "predicted", "observed", "n"])
    return frame.dropna(subset=["predicted", "observed"])


def cascade_stages(engine: Engine) -> pd.DataFrame:
    """Per cascade stage what people should see: features it accepted (of them safety ones)
    out of those that reached it, the target and delta it holds them to, the bound reached on
    its gold, and its cost (tokens, seconds)."""
    report = calibration_report(engine)
    columns = [
        "stage",
        "accepted",
        "safety accepted",
        "reached",
        "target",
        "delta",
        "threshold",
        "bound reached",
        "gold (accepted / reached, wrong)",
        "tokens",
        "seconds",
        "note",
    ]
    rows = [
        (
            s.name,
            s.accepted,
            s.accepted_safety,
            s.reached,
            report.target,
            round(s.delta, 4),
            s.threshold,
            s.bound,
            f"{s.gold_accepted} / {s.n_gold}, {s.gold_errors}",
            s.tokens,
            s.seconds,
            s.note or "",
        )
        for s in (report.stages if report else [])
    ]
    return pd.DataFrame(rows, columns=columns)


def coverage_curve(engine: Engine) -> pd.DataFrame:
    """Over the gold features' automatic answers: the share kept vs their agreement with the
    experts as a threshold on the stage confidence moves. In-sample (the curve the thresholds
    are tested on, not a guarantee). Agreement is the explainer's own verdict when it recorded
    one (concept, marked token), else an exact concept match."""
    with Session(engine) as session:
        rows = session.exec(
            select(
                Explanation.sae_id,
                Explanation.feature,
                Explanation.source,
                Explanation.status,
                Explanation.concepts,
                Explanation.probability,
                Explanation.details,
            ).where(Explanation.source.in_(["human", "auto"]))
        ).all()
    gold = {
        (s, f): set(c) for s, f, src, st, c, _, _ in rows if src == "human" and st == "accepted"
    }
    auto = [
        (p, bool((d or {}).get("agrees", set(c) == gold[(s, f)])))
        for s, f, src, _, c, p, d in rows
        if src == "auto" and p is not None and (s, f) in gold
    ]
    if len(auto) < 2:
        return pd.DataFrame(columns=["threshold", "coverage", "agreement"])
    probs = np.array([p for p, _ in auto])
    agree = np.array([a for _, a in auto], dtype=float)
    out = []
    for t in np.unique(probs):
        kept = probs >= t
        out.append((float(t), float(kept.mean()), float(agree[kept].mean())))
    return pd.DataFrame(out, columns=["threshold", "coverage", "agreement"])
