"""What a feature is explained from and judged by: the experts' gold labels, its explain split
(the strongest top contexts) and held-out scoring material, the corpus evidence of the explain
split and a cheap profile for finding similar features.

Shared by the run (which explains and scores) and the routing (which compares with the gold
labels and the nearest gold features), so both split a feature's contexts the same way: the
held-out contexts a feature is scored on are never the ones it was explained from.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sqlmodel import Session, select

from safesail.collection.chunks import StoredTextMaxima
from safesail.db.contracts import Workspace
from safesail.db.queries import chunked, human_labels
from safesail.db.tables import Context, Feature, corpus_concepts
from safesail.explainer.config import ExplainConfig
from safesail.explainer.explainers import (
    Evidence,
    Shown,
    base_rates,
    corpus_evidence,
    ranked_fired_tokens,
    segment,
)
from safesail.explainer.scorers import HeldOut
from safesail.features.examples import TOP, Example, feature_examples


class Gold(NamedTuple):
    """A human gold label (accepted, adjudicated)."""

    concepts: list[str]
    text: str
    confidence: float | None


class Material(NamedTuple):
    """What one feature is explained from and scored on."""

    feature: int
    vector: np.ndarray
    explain: list[Shown]
    held: HeldOut
    evidence: Evidence


def gold_labels(session: Session, sae_id: str) -> dict[int, Gold]:
    """The gold set: each feature's human label (queries.human_labels: the latest accepted)."""
    return {
        f: Gold(list(r.concepts), r.text or "", r.confidence)
        for f, r in human_labels(session, sae_id).items()
    }


def profile(feature: Feature, concepts: list[str]) -> np.ndarray:
    """A cheap profile for finding similar features: firing fraction per concept."""
    stats = feature.concept_stats or {}
    return np.array([stats.get(c, [0.0, 0.0])[1] for c in concepts], dtype=float)


def explain_split(row: Feature, config: ExplainConfig) -> tuple[list[Example], list[Example]]:
    """(explain split: the strongest top contexts, held-out rest incl. the decile samples)."""
    examples = feature_examples(row)
    top = [e for e in examples if e.kind == TOP]
    split = min(config.max_explain_split, max(1, len(top) // 2))
    return top[:split], top[split:] + [e for e in examples if e.kind != TOP]


def feature_evidence(
    session: Session, rows: list[Feature], config: ExplainConfig
) -> dict[int, Evidence]:
    """Corpus tag evidence of each feature's explain split (never the held-out contexts)."""
    tags = corpus_concepts(session)
    base = base_rates(tags)
    return {
        row.index: corpus_evidence([e.text_id for e in explain_split(row, config)[0]], tags, base)
        for row in rows
    }


def marked_tokens(
    session: Session, rows: list[Feature], config: ExplainConfig
) -> dict[int, list[str]]:
    """Each feature's marked words, most frequent first: the words holding a token at or above
    `mark_fraction` of the peak in the segments of the contexts an explainer is shown (the
    first `n_shown` of its explain split; `ranked_fired_tokens`). An agreeing explanation of a
    safety concept names one of them; the concept model's drafted sentence quotes them."""
    shown = {row.index: explain_split(row, config)[0][: config.n_shown] for row in rows}
    need = sorted({e.text_id for examples in shown.values() for e in examples})
    tokens = {
        c.text_id: c.tokens
        for part in chunked(need)
        for c in session.exec(select(Context).where(Context.text_id.in_(part)))
    }
    return {
        f: ranked_fired_tokens(
            [segment(tokens[e.text_id], e.activations, config) for e in examples],
            config.mark_fraction,
        )
        for f, examples in shown.items()
    }


def materials(
    ws: Workspace, sae_id: str, features: list[int], config: ExplainConfig, concepts: list[str]
) -> dict[int, Material]:
    """Explain split (top contexts 0..S-1), held-out activating contexts (the other top ones and
    the decile samples) and seeded non-activating texts, per feature. Of the texts' maxima
    only the features' own columns are read, within the workspace's memory budget."""
    maxima = StoredTextMaxima(ws.engine, sae_id, ws.config.memory_budget_bytes)
    text_ids = np.asarray(maxima.text_ids)
    out: dict[int, tuple[Feature, list, list, list[int]]] = {}
    with Session(ws.engine) as session:
        rows = [
            row
            for part in chunked(features)
            for row in session.exec(
                select(Feature).where(Feature.sae_id == sae_id, Feature.index.in_(part))
            )
        ]
        evidence = feature_evidence(session, list(rows), config)
        columns = maxima.columns([[row.index] for row in rows])
        need: set[int] = set()
        for row, column in zip(rows, columns, strict=True):
            explain, rest = explain_split(row, config)
            rng = np.random.default_rng([config.seed, row.index])
            held = _spread(rest, config.n_score_pos)
            rows_quiet = _non_activating(column, config.n_score_neg, rng)
            neg = [int(t) for t in text_ids[rows_quiet]]
            out[row.index] = (row, explain, held, neg)
            need |= {e.text_id for e in explain + held} | set(neg)
        tokens = {
            c.text_id: c.tokens
            for part in chunked(sorted(need))
            for c in session.exec(select(Context).where(Context.text_id.in_(part)))
        }
    result = {}
    for index, (row, explain, held, neg) in out.items():
        zeros = [Shown(tokens[t], np.zeros(len(tokens[t]), np.float32)) for t in neg]
        result[index] = Material(
            index,
            profile(row, concepts),
            [Shown(tokens[e.text_id], e.activations) for e in explain],
            HeldOut([Shown(tokens[e.text_id], e.activations) for e in held], zeros),
            evidence[index],
        )
    return result


NEAR_QUIET = 0.5
"""A text where a feature peaks below this share of its largest activation may stand in for a
non-activating one when too few texts are free of it (``_non_activating``): triage's own line
between firing and not (``TriageConfig.fire_fraction``, Safe-SAIL's per-neuron scale)."""


def _non_activating(column: sp.spmatrix, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row positions of n seeded texts the feature does not fire on. A dense feature can fire
    somewhere in every text; then its faintest texts (below NEAR_QUIET of its peak, weakest
    first) fill the rest, so its detection and intruder scores still have a contrast instead
    of none (a detection score over activating texts alone is 1 whatever the explanation)."""
    column = column.tocoo()
    level = np.zeros(column.shape[0], dtype=np.float64)
    level[column.row] = column.data
    quiet = np.flatnonzero(level <= 0)
    if len(quiet) >= n:
        return rng.choice(quiet, size=n, replace=False)
    peak = float(level.max(initial=0.0))
    faint = np.flatnonzero((level > 0) & (level < NEAR_QUIET * peak))
    faint = faint[np.argsort(level[faint], kind="stable")][: n - len(quiet)]
    return np.concatenate([rng.permutation(quiet), faint]).astype(int)


def _spread(examples: list, n: int) -> list:
    """n examples spread over the list (strongest to weakest), so scoring sees every level."""
    if len(examples) <= n:
        return list(examples)
    return [examples[int(i)] for i in np.linspace(0, len(examples) - 1, n).round()]
