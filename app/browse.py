"""The feature browser's and the landscape's data: safety features per SAE and concept, an
SAE's feature table with labels and top tokens, one feature's contexts, explanations and
annotations, and its token heatmap. A feature's label is `safesail.db.queries.best_accepted`'s.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import best_accepted, chunked
from safesail.db.tables import Annotation, Context, Explanation, Feature, SaeRecord, Score
from safesail.features.examples import TOP, feature_examples
from safesail.taxonomy import BENIGN, UNINTERPRETABLE
from safesail.triage.text import TEXT_LEVEL


def landscape(engine: Engine) -> pd.DataFrame:
    """Safety features per SAE (with its layer) and concept: triage candidates and features
    with an accepted safety label, the latter by their label's concepts."""
    with Session(engine) as session:
        saes = {r.id: r for r in session.exec(select(SaeRecord))}
        candidates = session.exec(
            select(Feature.sae_id, Feature.index, Feature.concept).where(Feature.candidate)
        ).all()
        accepted = {sae_id: best_accepted(session, sae_id) for sae_id in saes}
    concepts: dict[tuple[str, int], set[str]] = defaultdict(set)
    for sae_id, index, concept in candidates:
        concepts[(sae_id, index)].add(concept)
    for sae_id, labels in accepted.items():
        for index, e in labels.items():
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


def sae_ranking(engine: Engine) -> pd.DataFrame:
    """The candidate SAEs as `safesail select` ranks them: today's score, Safe-SAIL's
    pre-explanation index (mean I_CDF) and L0 at t, SAEBench's core metrics; best first."""
    from safesail.selection.score import ranking_rows

    with Session(engine) as session:
        records = list(session.exec(select(SaeRecord)))
    return pd.DataFrame(ranking_rows(records))


def feature_table(engine: Engine, sae_id: str) -> pd.DataFrame:
    """Candidates, labeled features and the features triage rejected for what they fire on
    (text-level candidates whose peaks are function words, digits, ... or that are dense) of
    an SAE, with their label, scores, triage reason and top tokens."""
    with Session(engine) as session:
        accepted = best_accepted(session, sae_id)
        shown = Feature.candidate | Feature.triage_reason.not_like(f"{TEXT_LEVEL}:%")
        rows = list(session.exec(select(Feature).where(Feature.sae_id == sae_id, shown)))
        labeled = sorted(set(accepted) - {f.index for f in rows})
        rows += [  # the labeled ones besides, in parts (never one IN list of every label)
            f
            for part in chunked(labeled)
            for f in session.exec(
                select(Feature).where(Feature.sae_id == sae_id, Feature.index.in_(part))
            )
        ]
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
    tokens = {
        text_id: toks
        for part in chunked(sorted(ids))
        for text_id, toks in session.exec(
            select(Context.text_id, Context.tokens).where(Context.text_id.in_(part))
        )
    }
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
