"""What the app shows, as plain queries over the workspace database (no Streamlit here, so each
figure's data is testable on its own). The app only reads: it never creates tables or rows.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.collect import TOP, feature_examples
from safesail.selection import TEXT_LEVEL
from safesail.storage import (
    Annotation,
    Context,
    Explanation,
    Feature,
    LlmCall,
    SaeRecord,
    Score,
    best_accepted,
    get_meta,
)
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

STATES = ("human-labeled", "auto-accepted", "queued for humans", "unexplained")
"""Coverage states of a safety candidate, in the order of the stacked bars."""
_NEEDED_TABLES = {"meta", "feature", "saerecord", "explanation"}


def connect(workspace: Path, db_url: str | None = None) -> Engine | None:
    """A plain engine on the workspace database, or None when there is none yet (a missing
    SQLite file is not created: the app only reads)."""
    if db_url is None:
        path = workspace / "safesail.db"
        if not path.is_file():
            return None
        db_url = f"sqlite:///{path}"
    engine = create_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    except Exception:  # noqa: BLE001 - an unreachable database reads as "nothing yet"
        return None
    return engine if tables >= _NEEDED_TABLES else None


def meta(engine: Engine, key: str) -> Any:
    with Session(engine) as session:
        return get_meta(session, key)


def selected_sae(engine: Engine) -> str | None:
    return meta(engine, "selected_sae")


def accepted_by_feature(engine: Engine, sae_id: str) -> dict[int, Explanation]:
    """Each feature's best accepted explanation: human, then automatic, then prior."""
    with Session(engine) as session:
        return best_accepted(session, sae_id)


def coverage(engine: Engine) -> pd.DataFrame:
    """Safety candidates of the selected SAE per concept and coverage state (concept, state,
    features)."""
    sae_id = selected_sae(engine)
    with Session(engine) as session:
        candidates = session.exec(
            select(Feature.index, Feature.concept).where(
                Feature.sae_id == sae_id, Feature.candidate
            )
        ).all()
        open_auto = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == sae_id,
                    Explanation.source == "auto",
                    Explanation.status != "accepted",
                )
            )
        )
    accepted = accepted_by_feature(engine, sae_id)
    counts: Counter = Counter()
    for index, concept in candidates:
        e = accepted.get(index)
        if e is not None and e.source == "human":
            state = STATES[0]
        elif e is not None and e.source == "auto":
            state = STATES[1]
        elif index in open_auto:
            state = STATES[2]
        else:
            state = STATES[3]
        counts[(concept, state)] += 1
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
    n = {s: int(frame.loc[frame.state == s, "features"].sum()) for s in STATES}
    tried = n[STATES[1]] + n[STATES[2]]
    rate = n[STATES[1]] / tried if tried else None
    human = n[STATES[2]] + math.ceil(n[STATES[3]] * (1 - (rate or 0.0)))
    return Estimate(
        n[STATES[3]],
        n[STATES[2]],
        rate,
        human,
        _to_target(learner_curve(engine), target_f1),
        target_f1,
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
    """The active learner's held-out macro-F1 per number of labels."""
    learner = meta(engine, "learner") or {}
    points = [_pair(p) for p in learner.get("curve") or []]
    return pd.DataFrame([p for p in points if p], columns=["labels", "f1"])


def _pair(point: Any, keys: tuple[str, str] = ("n_labels", "f1")) -> tuple[float, float] | None:
    """[x, y] or {x_key: .., y_key: ..} (rooms may write either)."""
    if isinstance(point, dict):
        point = [point.get(keys[0]), point.get(keys[1])]
    ok = isinstance(point, list | tuple) and len(point) >= 2
    if ok and all(isinstance(v, int | float) for v in point[:2]):  # F1 may be None early on
        return float(point[0]), float(point[1])
    return None


def label_distribution(engine: Engine) -> pd.DataFrame:
    dist = (meta(engine, "learner") or {}).get("label_distribution") or {}
    return pd.DataFrame(sorted(dist.items()), columns=["label", "features"])


def kappa(engine: Engine) -> pd.DataFrame:
    """Annotator agreement per concept (Cohen's kappa, else Fleiss')."""
    from exports.records import _kappas

    values = _kappas(meta(engine, "annotation"))
    return pd.DataFrame(sorted(values.items()), columns=["concept", "kappa"])


def reliability(engine: Engine) -> pd.DataFrame:
    """Calibration bins: predicted probability vs observed agreement (and bin size)."""
    cal = meta(engine, "calibration") or {}
    rows = []
    for point in cal.get("reliability") or []:
        if isinstance(point, dict):
            p = point.get("predicted", point.get("mean_probability"))
            o = point.get("observed", point.get("agreement"))
            rows.append((p, o, point.get("n", point.get("count"))))
        elif isinstance(point, list | tuple) and len(point) >= 2:
            rows.append((point[0], point[1], point[2] if len(point) > 2 else None))
    frame = pd.DataFrame(rows, columns=["predicted", "observed", "n"])
    return frame.dropna(subset=["predicted", "observed"])


def coverage_curve(engine: Engine) -> pd.DataFrame:
    """Share of automatic labels accepted vs their agreement with the human gold label, as the
    acceptance threshold on the calibrated (held-out) probability moves, over the features with
    both labels. Agreement is the explainer's own verdict when it recorded one (concept and
    text), else an exact concept match."""
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


def cost_per_accepted(engine: Engine) -> dict[str, float] | None:
    """Tokens and dollars spent per auto-accepted feature (all LLM calls / accepted)."""
    cost = llm_cost(engine)
    with Session(engine) as session:
        accepted = len(
            set(
                session.exec(
                    select(Explanation.sae_id, Explanation.feature).where(
                        Explanation.source == "auto", Explanation.status == "accepted"
                    )
                ).all()
            )
        )
    if cost.empty:
        return None
    return {
        "accepted": accepted,
        "tokens": float(cost["tokens"].sum()) / max(accepted, 1),
        "cost_usd": float(cost["cost_usd"].sum()) / max(accepted, 1),
    }


def landscape(engine: Engine) -> pd.DataFrame:
    """Safety features per SAE (with its layer) and concept: triage candidates and features
    with an accepted safety label, the latter by their label's concepts."""
    with Session(engine) as session:
        saes = {r.id: r for r in session.exec(select(SaeRecord))}
        candidates = session.exec(
            select(Feature.sae_id, Feature.index, Feature.concept).where(Feature.candidate)
        ).all()
    concepts: dict[tuple[str, int], set[str]] = defaultdict(set)
    for sae_id, index, concept in candidates:
        concepts[(sae_id, index)].add(concept)
    for sae_id in saes:
        for index, e in accepted_by_feature(engine, sae_id).items():
            safe = set(e.concepts) - {BENIGN, UNINTERPRETABLE}
            if safe or (sae_id, index) in concepts:
                concepts[(sae_id, index)] = safe
    counts = Counter((sae_id, c) for (sae_id, _), names in concepts.items() for c in names)
    rows = [
        (saes[s].layer if s in saes else -1, s, f"L{saes[s].layer} · {s}" if s in saes else s, c, n)
        for (s, c), n in counts.items()
    ]
    return pd.DataFrame(
        rows, columns=["layer", "sae", "sae_label", "concept", "features"]
    ).sort_values(["layer", "sae", "concept"])


def feature_table(engine: Engine, sae_id: str) -> pd.DataFrame:
    """Candidates, labeled features and the features triage rejected for what they fire on
    (text-level candidates whose peaks are function words, digits, ... or that are dense) of
    an SAE, with their label, scores, triage reason and top tokens."""
    accepted = accepted_by_feature(engine, sae_id)
    with Session(engine) as session:
        rows = list(
            session.exec(
                select(Feature).where(
                    Feature.sae_id == sae_id,
                    Feature.candidate
                    | Feature.index.in_(list(accepted))
                    | Feature.triage_reason.not_like(f"{TEXT_LEVEL}:%"),
                )
            )
        )
        statuses: dict[int, set[str]] = defaultdict(set)
        for index, status in session.exec(
            select(Explanation.feature, Explanation.status).where(Explanation.sae_id == sae_id)
        ):
            statuses[index].add(status)
        texts = _top_tokens(session, rows)
    records = []
    for f in rows:
        e = accepted.get(f.index)
        records.append(
            {
                "feature": f.index,
                "concept": f.concept,
                "candidate": f.candidate,
                "triage_reason": f.triage_reason or "",
                "safety_score": f.safety_score or 0.0,
                "auroc": f.auroc,
                "label": ", ".join(e.concepts) if e else "",
                "explanation": e.text if e else "",
                "source": e.source if e else ("open" if statuses.get(f.index) else ""),
                "top_tokens": texts.get(f.index, ""),
            }
        )
    frame = pd.DataFrame(
        records,
        columns=[
            "feature",
            "concept",
            "candidate",
            "triage_reason",
            "safety_score",
            "auroc",
            "label",
            "explanation",
            "source",
            "top_tokens",
        ],
    )
    return frame.sort_values(["safety_score", "feature"], ascending=[False, True])


def _top_tokens(session: Session, rows: list[Feature], n: int = 5) -> dict[int, str]:
    """Each feature's peak tokens in its top contexts (most frequent first)."""
    examples = {f.index: [e for e in feature_examples(f) if e.kind == TOP][:n] for f in rows}
    ids = {e.text_id for exs in examples.values() for e in exs}
    tokens = dict(
        session.exec(select(Context.text_id, Context.tokens).where(Context.text_id.in_(ids))).all()
    )
    out = {}
    for index, exs in examples.items():
        peaks = Counter(
            tokens[e.text_id][int(e.activations.argmax())].strip()
            for e in exs
            if e.text_id in tokens and len(e.activations)
        )
        out[index] = " ".join(t for t, _ in peaks.most_common())
    return out


class FeatureView(NamedTuple):
    """Everything the browser shows about one feature."""

    feature: Feature
    contexts: list[tuple[float, list[str], np.ndarray]]
    explanations: pd.DataFrame
    annotations: pd.DataFrame


def feature_view(engine: Engine, sae_id: str, index: int, contexts: int = 6) -> FeatureView | None:
    with Session(engine) as session:
        feature = session.get(Feature, (sae_id, index))
        if feature is None:
            return None
        examples = [e for e in feature_examples(feature) if e.kind == TOP][:contexts]
        shown = []
        for e in examples:
            ctx = session.get(Context, e.text_id)
            if ctx is not None:
                shown.append((e.max_act, ctx.tokens, e.activations))
        explanations = list(
            session.exec(
                select(Explanation).where(
                    Explanation.sae_id == sae_id, Explanation.feature == index
                )
            )
        )
        scores = defaultdict(list)
        if explanations:
            for s in session.exec(
                select(Score).where(Score.explanation_id.in_([e.id for e in explanations]))
            ):
                scores[s.explanation_id].append(f"{s.scorer} {s.value:.2f}")
        annotations = list(
            session.exec(
                select(Annotation).where(Annotation.sae_id == sae_id, Annotation.feature == index)
            )
        )
    ex_frame = pd.DataFrame(
        [
            {
                "source": e.source,
                "status": e.status,
                "concepts": ", ".join(e.concepts),
                "explanation": e.text,
                "by": e.author,
                "model / project": e.model_version,
                "P(agree)": e.probability,
                "scores": "; ".join(scores.get(e.id, [])),
                "when": e.created_at,
            }
            for e in explanations
        ]
    )
    ann_frame = pd.DataFrame(
        [
            {
                "annotator": a.annotator,
                "concepts": ", ".join(a.concepts),
                "explanation": a.explanation,
                "confidence": a.confidence,
                "seconds": a.lead_time,
                "task": a.task_id,
                "annotation": a.annotation_id,
                "valid": a.valid,
                "problem": a.problem,
            }
            for a in annotations
        ]
    )
    return FeatureView(feature, shown, ex_frame, ann_frame)


def heatmap_html(tokens: list[str], activations: np.ndarray, scale: float) -> str:
    """One context as inline-styled spans, red by activation / scale; tokens are escaped."""
    spans = []
    for token, act in zip(tokens, activations, strict=False):
        alpha = min(1.0, float(act) / scale) if scale > 0 else 0.0
        title = f"{float(act):.2f}"
        spans.append(
            f'<span title="{title}" style="background: rgba(220,38,38,{alpha:.2f});'
            f' padding: 1px 0; border-radius: 2px">{html.escape(token)}</span>'
        )
    return (
        '<div style="font-family: monospace; white-space: pre-wrap; line-height: 1.9">'
        + "".join(spans)
        + "</div>"
    )


def sae_list(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [
            {"id": r.id, "layer": r.layer, "d_sae": r.d_sae}
            for r in session.exec(select(SaeRecord).order_by(SaeRecord.layer, SaeRecord.id))
        ]
