"""A fixed-length representation of each SAE feature built from what the database already holds,
so the learner needs no model forward pass: per-concept selectivity, the corpus concepts of its
top contexts (what an expert reads first), activation statistics, triage results and a cheap
embedding of the tokens the feature fires on.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
from sqlalchemy import case, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import chunked
from safesail.db.tables import Context, Feature, corpus_concepts
from safesail.features.examples import TOP, examples_of
from safesail.taxonomy import BENIGN, UNINTERPRETABLE, Taxonomy

EMBED_DIM = 24
"""Components of the top-token embedding (TF-IDF over peak tokens, reduced by TruncatedSVD)."""
PEAK_SHARE = 0.5
"""A token counts as a peak when it reaches this share of its context's max activation."""
MIN_TOP = 5
"""Fewer top contexts than this leave too little to judge (the prior says uninterpretable)."""


class FeatureMatrix(NamedTuple):
    """Rows of X are the features (of one SAE) that have examples, in `features` order."""

    sae_id: str
    features: np.ndarray  # feature indices, int64
    X: np.ndarray  # float32 (n_features, n_columns)
    columns: list[str]
    value: np.ndarray  # labeling value: safety relevance x activation frequency, in [0, 1]
    prior: list[tuple[str, float]]  # triage's guess (label, rough probability) for cold starts


def _peak_tokens(examples: list, contexts: dict[int, list[str]]) -> list[str]:
    """The normalised tokens at (near) the peak activation of each top context."""
    out = []
    for ex in examples:
        tokens = contexts.get(ex.text_id)
        if tokens is None or ex.max_act <= 0:
            continue
        for pos in np.flatnonzero(ex.activations >= PEAK_SHARE * ex.max_act):
            if pos < len(tokens) and (tok := tokens[pos].strip().lower()):
                out.append(tok)
    return out


def _embed(docs: list[list[str]], seed: int) -> np.ndarray:
    """TF-IDF over each feature's peak tokens, reduced to EMBED_DIM dimensions (zero-padded
    when the vocabulary is smaller)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    out = np.zeros((len(docs), EMBED_DIM), dtype=np.float32)
    if not any(docs):
        return out
    tfidf = TfidfVectorizer(analyzer=lambda doc: doc, sublinear_tf=True).fit_transform(docs)
    k = min(EMBED_DIM, tfidf.shape[1] - 1, len(docs) - 1)
    if k < 1:
        return out
    out[:, :k] = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf)
    return out


_CACHE: weakref.WeakKeyDictionary[Engine, dict[tuple, tuple[tuple, FeatureMatrix]]] = (
    weakref.WeakKeyDictionary()
)
"""Per engine (dropped with it): (sae_id, seed, taxonomy) -> (fingerprint, matrix)."""


def _fingerprint(session: Session, sae_id: str) -> tuple:
    """A cheap summary of everything the matrix reads: the SAE's feature rows (count, examples,
    collect's statistics, triage's results) and the stored contexts. Collect and triage
    update rows in place, so sums of their columns are part of it, not just the count."""
    f = Feature
    row = session.exec(
        select(
            func.count(),
            func.count(f.examples),
            func.max(f.index),
            func.sum(f.n_fire),
            func.sum(f.max_act),
            func.sum(case((f.candidate, 1), else_=0)),
            func.sum(func.coalesce(f.safety_score, 0.0)),
            func.sum(func.coalesce(f.auroc, 0.0)),
            func.sum(func.coalesce(f.precision, 0.0)),
        ).where(f.sae_id == sae_id)
    ).one()
    contexts = session.exec(select(func.count()).select_from(Context)).one()
    return (*row, contexts)


def feature_matrix(engine: Engine, sae_id: str, taxonomy: Taxonomy, seed: int = 0) -> FeatureMatrix:
    """The representation of every feature of `sae_id` that has examples, cached in the process
    while the SAE's rows are unchanged (building takes seconds on 4,608 features, and one
    `label push` asks for it twice). Its arrays are read-only: the cache shares them."""
    key = (sae_id, seed, tuple(taxonomy.concepts), tuple(taxonomy.safety_concepts()))
    with Session(engine) as session:
        fingerprint = _fingerprint(session, sae_id)
    held = _CACHE.setdefault(engine, {}).get(key)
    if held is not None and held[0] == fingerprint:
        return held[1]
    matrix = _build(engine, sae_id, taxonomy, seed)
    for array in (matrix.features, matrix.X, matrix.value):
        array.flags.writeable = False
    _CACHE[engine][key] = (fingerprint, matrix)
    return matrix


class _Columns(NamedTuple):
    """The Feature columns the representation reads, selected as plain columns (as triage
    reads them): no ORM object per feature, whose identity map and change tracking the
    learner never uses."""

    index: int
    n_fire: int
    firing_rate: float
    mean_act: float
    max_act: float
    quantiles: dict[str, float]
    concept_stats: dict[str, list[float]]
    examples: bytes
    candidate: bool
    concept: str | None
    safety_score: float | None
    auroc: float | None
    precision: float | None


def _build(engine: Engine, sae_id: str, taxonomy: Taxonomy, seed: int) -> FeatureMatrix:
    concepts = [c for c in taxonomy.concepts if c != UNINTERPRETABLE]
    safety = taxonomy.safety_concepts()
    with Session(engine) as session:
        rows = [
            _Columns(*r)
            for r in session.exec(
                select(*(getattr(Feature, name) for name in _Columns._fields))
                .where(Feature.sae_id == sae_id, Feature.examples.is_not(None))
                .order_by(Feature.index)
            )
        ]
        examples = [[e for e in examples_of(r.examples) if e.kind == TOP] for r in rows]
        needed = sorted({e.text_id for exs in examples for e in exs})
        text_concepts = corpus_concepts(session)
        contexts = {
            text_id: tokens
            for part in chunked(needed)
            for text_id, tokens in session.exec(
                select(Context.text_id, Context.tokens).where(Context.text_id.in_(part))
            )
        }
    n = len(rows)
    frac = np.zeros((n, len(concepts)), dtype=np.float64)
    level = np.zeros_like(frac)
    for i, row in enumerate(rows):
        for j, c in enumerate(concepts):
            mean_max, frac_fire = row.concept_stats.get(c, (0.0, 0.0))
            level[i, j] = mean_max / row.max_act if row.max_act > 0 else 0.0
            frac[i, j] = frac_fire
    mean_frac = frac.mean(axis=1, keepdims=True) if concepts else np.zeros((n, 1))
    lift = np.log((frac + 0.01) / (mean_frac + 0.01))
    top = np.zeros_like(frac)
    col = {c: j for j, c in enumerate(concepts)}
    for i, exs in enumerate(examples):
        for ex in exs:
            for c in set(text_concepts.get(ex.text_id, ())):
                if c in col:
                    top[i, col[c]] += 1.0 / len(exs)
    base = np.zeros(len(concepts))
    for labels in text_concepts.values():
        for c in set(labels):
            if c in col:
                base[col[c]] += 1.0 / max(len(text_concepts), 1)
    top_lift = np.log((top + 0.01) / (base + 0.01))
    n_fire = np.array([r.n_fire for r in rows], dtype=np.float64)
    n_top = np.array([len(e) for e in examples], dtype=np.float64)
    qkeys = sorted({k for r in rows for k in r.quantiles}, key=float)
    quant = np.array(
        [
            [r.quantiles.get(k, 0.0) / r.max_act if r.max_act > 0 else 0.0 for k in qkeys]
            for r in rows
        ]
    ).reshape(n, len(qkeys))
    stats = np.column_stack(
        [
            np.log1p(n_fire),
            np.log10([r.firing_rate + 1e-7 for r in rows]),
            np.log1p([r.mean_act for r in rows]),
            np.log1p([r.max_act for r in rows]),
            np.log1p(n_top),
        ]
    ).reshape(n, 5)
    score = np.array([r.safety_score or 0.0 for r in rows])
    auroc = np.array([r.auroc if r.auroc is not None else 0.5 for r in rows])
    triage = np.column_stack(
        [
            score,
            auroc,
            [r.precision or 0.0 for r in rows],
            [float(r.candidate) for r in rows],
        ]
    ).reshape(n, 4)
    best = np.zeros((n, len(safety)))
    for i, row in enumerate(rows):
        if row.concept in safety:
            best[i, safety.index(row.concept)] = auroc[i] - 0.5
    embed = _embed([_peak_tokens(e, contexts) for e in examples], seed)
    X = np.hstack([frac, level, lift, top, top_lift, quant, stats, triage, best, embed]).astype(
        np.float32
    )
    columns = (
        [f"frac:{c}" for c in concepts]
        + [f"level:{c}" for c in concepts]
        + [f"lift:{c}" for c in concepts]
        + [f"top:{c}" for c in concepts]
        + [f"top_lift:{c}" for c in concepts]
        + [f"q{k}" for k in qkeys]
        + ["log_n_fire", "log_rate", "log_mean", "log_max", "log_n_top"]
        + ["safety_score", "auroc", "precision", "candidate"]
        + [f"triage:{c}" for c in safety]
        + [f"embed{i}" for i in range(EMBED_DIM)]
    )
    safe_idx = [concepts.index(c) for c in safety if c in concepts]
    benign = frac[:, concepts.index(BENIGN)] if BENIGN in concepts else np.zeros(n)
    excess = (frac[:, safe_idx].max(axis=1) - benign).clip(0) if safe_idx else np.zeros(n)
    relevance = 0.05 + np.maximum(score, excess)
    frequency = np.log1p(n_fire) / max(np.log1p(n_fire).max(initial=0.0), 1e-9)
    value = relevance * frequency
    value = value / max(value.max(initial=0.0), 1e-12)
    prior = [_prior(r, len(e)) for r, e in zip(rows, examples, strict=True)]
    return FeatureMatrix(
        sae_id,
        np.array([r.index for r in rows], dtype=np.int64),
        X,
        columns,
        value,
        prior,
    )


def _prior(row: _Columns, n_top: int) -> tuple[str, float]:
    """Triage's answer before any human label: its concept for candidates, else benign."""
    if n_top < MIN_TOP:
        return UNINTERPRETABLE, 0.5
    if row.candidate and row.concept:
        return row.concept, float(row.precision or 0.5)
    return BENIGN, 0.5
