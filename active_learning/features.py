"""What the concept model reads of each SAE feature: what an annotator reads in its Label
Studio task, not the corpus tags of the texts it fires in.

A reader labels a feature by what its marked tokens mean (bench/reference/RUBRIC.md), so the
columns are built from the same windows the task shows (`safesail.experts.windows`): what the
windows say, their tokens and the reader's answer (`active_learning.columns`), and how the
feature fires (density in its windows, activation quantiles, firing rate and count).

The reader's answer is the label the project's simulated expert gives from the same windows
and embeddings, and its 1-5 confidence. It never sees a gold label, so it is a label-free
column like the rest; the model learns from gold how far to trust it per concept, and the
explainer's cascade accepts the model's concept only where the reader, reading on its own,
names the same one (two readings that agree err less than either: on the reference set's dev
half, 31 of the top 33 such features agree with the readers, against 28 of the model's own top
33).

Beside those, every feature keeps its unit decoder direction (from the SAE weights) and its
activation pattern (where in the corpus it fires), which the learner turns into "how close is
it to each labeled concept" per round (`neighbour_columns`), leaving the feature itself out.

The corpus-tag statistics and triage's results stay as optional columns, named `tag:...`
(`columns.TAG_PREFIX`), so every figure can be reported without them.

Building it embeds every window of every feature, so the matrix is built once per SAE and
cached in the process and on disk under the workspace, keyed by everything it reads: a new
round of labels recomputes only the neighbour columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import weakref
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import sparse
from sqlalchemy import case, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from active_learning.columns import (
    TAG_PREFIX,
    FeatureRow,
    WindowStats,
    pattern_matrix,
    read_block,
    reader_columns,
    reading_columns,
    tag_columns,
    token_columns,
    window_stats,
)
from safesail.db.tables import Context, Feature, SaeRecord, corpus_concepts
from safesail.experts.embed import EXEMPLARS_PATH, Prototypes, default_embedder
from safesail.taxonomy import BENIGN, UNINTERPRETABLE, Taxonomy

FEATURES_VERSION = 3
"""Part of the disk cache's key: rises when a column changes meaning."""
MIN_TOP = 5
"""Fewer top contexts than this leave too little to judge (the prior says uninterpretable)."""
BUILD_BLOCK = 4096
"""Features whose examples, windows and window embeddings are held at once while the matrix
is built: every column but the principal components is per feature, so the blocks change only
the peak (at 65,536 features one pass held 3.7 GB). A smaller SAE is one block."""


class FeatureMatrix(NamedTuple):
    """Rows are the features (of one SAE) that have examples, in `features` order."""

    sae_id: str
    features: np.ndarray  # feature indices, int64
    X: np.ndarray  # float32 (n_features, n_columns): the label-free columns
    columns: list[str]
    value: np.ndarray  # labeling value: safety relevance x firing frequency, in [0, 1]
    prior: list[tuple[str, float]]  # triage's guess (label, rough probability) for cold starts
    decoder: np.ndarray  # float32 (n_features, d_in) unit decoder directions (0: no weights)
    pattern: sparse.csr_matrix  # (n_features, n_texts) unit rows: activation per corpus text
    reader: list[tuple[str, int]]  # the reader's (first label, 1-5 confidence) per feature


def tag_free(columns: list[str]) -> np.ndarray:
    """Indices of the columns not made of corpus tags or triage's results."""
    return np.array([i for i, c in enumerate(columns) if not c.startswith(TAG_PREFIX)], dtype=int)


def neighbour_columns(
    matrix: FeatureMatrix, labeled_rows: np.ndarray, labels: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Per row and class: the highest cosine of the row's decoder direction, and of its
    activation pattern, with a labeled feature of that class, never with the row itself (a
    labeled row sees the others, as an unlabeled one does), 0 when the class has no labeled
    feature. Features that write the same direction, or fire on the same texts, tend to mean
    the same: this is how the labels of the neighbours reach the rest."""
    n, k = len(matrix.features), len(classes)
    out = np.zeros((n, 2 * k), dtype=np.float32)
    names = [f"near_decoder:{c}" for c in classes] + [f"near_pattern:{c}" for c in classes]
    labeled_rows = np.asarray(labeled_rows, dtype=int)
    if not len(labeled_rows):
        return out, names
    sims = (
        matrix.decoder @ matrix.decoder[labeled_rows].T,
        np.asarray((matrix.pattern @ matrix.pattern[labeled_rows].T).todense(), dtype=np.float32),
    )
    labels = np.asarray(labels)
    for s, sim in enumerate(sims):
        sim[labeled_rows, np.arange(len(labeled_rows))] = -np.inf
        for j, c in enumerate(classes):
            own = labels == c
            if own.any():
                best = sim[:, own].max(axis=1)
                out[:, s * k + j] = np.where(np.isfinite(best), best, 0.0)
    return out, names


_CACHE: weakref.WeakKeyDictionary[Engine, dict[tuple, tuple[tuple, FeatureMatrix]]] = (
    weakref.WeakKeyDictionary()
)
"""Per engine (dropped with it): (sae_id, seed, taxonomy) -> (fingerprint, matrix)."""


def _fingerprint(session: Session, sae_id: str) -> tuple:
    """A cheap summary of everything the matrix reads: the SAE's feature rows (count, examples,
    collect's statistics, triage's results), its weights file and the stored contexts. Collect
    and triage update rows in place, so sums of their columns are part of it, not just the
    count."""
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
    record = session.get(SaeRecord, sae_id)
    weights = Path(record.path) / "sae_weights.safetensors" if record else None
    stamp = (
        (weights.stat().st_size, weights.stat().st_mtime_ns)
        if weights and weights.exists()
        else None
    )
    return (*(round(v, 4) if isinstance(v, float) else v for v in row), contexts, stamp)


def feature_matrix(
    engine: Engine,
    sae_id: str,
    taxonomy: Taxonomy,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> FeatureMatrix:
    """The representation of every feature of `sae_id` that has examples, cached in the process
    and (with `cache_dir`) on disk while the SAE's rows and weights are unchanged. Its arrays are
    read-only: the cache shares them."""
    key = (sae_id, seed, tuple(taxonomy.concepts), tuple(taxonomy.safety_concepts()))
    with Session(engine) as session:
        fingerprint = _fingerprint(session, sae_id)
    held = _CACHE.setdefault(engine, {}).get(key)
    if held is not None and held[0] == fingerprint:
        return held[1]
    exemplars = hashlib.sha1(EXEMPLARS_PATH.read_bytes()).hexdigest()  # the reader's columns
    digest = hashlib.sha1(
        json.dumps([FEATURES_VERSION, key, fingerprint, exemplars], default=str).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"concept-features-{sae_id}-{digest}.npz" if cache_dir else None
    matrix = _load(path, engine, sae_id) if path and path.exists() else None
    if matrix is None:
        matrix = _build(engine, sae_id, taxonomy, seed)
        if path is not None:
            _save(matrix, path)
    for array in (matrix.features, matrix.X, matrix.value, matrix.decoder):
        array.flags.writeable = False
    _CACHE[engine][key] = (fingerprint, matrix)
    return matrix


def _save(matrix: FeatureMatrix, path: Path) -> None:
    """Written to a temporary name and renamed: an interrupted write leaves no half file. The
    SAE's older matrices (rows or weights changed since) are removed: nothing reads them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    own = re.compile(rf"concept-features-{re.escape(matrix.sae_id)}-[0-9a-f]{{16}}\.npz")
    for old in path.parent.glob("concept-features-*.npz"):
        if old != path and own.fullmatch(old.name):
            old.unlink(missing_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        features=matrix.features,
        X=matrix.X,
        columns=np.array(matrix.columns),
        value=matrix.value,
        prior_labels=np.array([p[0] for p in matrix.prior]),
        prior_probs=np.array([p[1] for p in matrix.prior], dtype=np.float64),
        pattern_data=matrix.pattern.data,
        pattern_indices=matrix.pattern.indices,
        pattern_indptr=matrix.pattern.indptr,
        pattern_shape=np.array(matrix.pattern.shape),
        reader_labels=np.array([r[0] for r in matrix.reader]),
        reader_confidence=np.array([r[1] for r in matrix.reader], dtype=np.int64),
    )
    tmp.replace(path)


def _load(path: Path, engine: Engine, sae_id: str) -> FeatureMatrix | None:
    """The cached matrix (the decoder is read from the weights again); None when unreadable."""
    try:
        with np.load(path) as z:
            features = z["features"]
            pattern = sparse.csr_matrix(
                (z["pattern_data"], z["pattern_indices"], z["pattern_indptr"]),
                shape=tuple(z["pattern_shape"]),
            )
            return FeatureMatrix(
                sae_id,
                features,
                z["X"],
                [str(c) for c in z["columns"]],
                z["value"],
                [
                    (str(label), float(p))
                    for label, p in zip(z["prior_labels"], z["prior_probs"], strict=True)
                ],
                _decoder(engine, sae_id, features),
                pattern,
                [
                    (str(label), int(c))
                    for label, c in zip(z["reader_labels"], z["reader_confidence"], strict=True)
                ],
            )
    except (OSError, ValueError, KeyError):
        return None


def _decoder(engine: Engine, sae_id: str, features: np.ndarray) -> np.ndarray:
    """Unit decoder directions of the features, read from the SAE's weights file (sae-lens
    format: W_dec is d_sae x d_in); zeros when the weights are not on disk (a reference-only
    SAE), so the decoder columns then carry nothing rather than failing."""
    from safetensors import safe_open

    with Session(engine) as session:
        record = session.get(SaeRecord, sae_id)
    path = Path(record.path) / "sae_weights.safetensors" if record else None
    if path is None or not path.exists():
        return np.zeros((len(features), 1), dtype=np.float32)
    with safe_open(str(path), framework="numpy") as weights:
        w_dec = np.asarray(weights.get_tensor("W_dec"), dtype=np.float32)
    rows = w_dec[np.asarray(features, dtype=int)]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _build(engine: Engine, sae_id: str, taxonomy: Taxonomy, seed: int) -> FeatureMatrix:
    with Session(engine) as session:
        rows = [
            FeatureRow(*r)
            for r in session.exec(
                select(*(getattr(Feature, name) for name in FeatureRow._fields))
                .where(Feature.sae_id == sae_id, Feature.examples.is_not(None))
                .order_by(Feature.index)
            )
        ]
        text_concepts = corpus_concepts(session)
    features = np.array([r.index for r in rows], dtype=np.int64)
    prototypes = Prototypes(taxonomy, default_embedder())
    blocks = [
        read_block(engine, sae_id, features[start : start + BUILD_BLOCK], taxonomy, prototypes)
        for start in range(0, len(features), BUILD_BLOCK)
    ]
    reading, reading_names, safety_votes = reading_columns(
        WindowStats.stack([b.stats for b in blocks])
        if blocks
        else window_stats([], prototypes, default_embedder()),
        prototypes.labels,
        seed,
    )
    token_names = token_columns([])[1]
    tokens = np.vstack([b.tokens for b in blocks]) if blocks else np.zeros((0, len(token_names)))
    reader = [answer for b in blocks for answer in b.reader]
    top_texts = [texts for b in blocks for texts in b.top_texts]
    said, said_names = reader_columns(reader, taxonomy)
    n = len(rows)
    n_fire = np.array([r.n_fire for r in rows], dtype=np.float64)
    qkeys = sorted({k for r in rows for k in r.quantiles}, key=float)
    quant = np.array(
        [
            [r.quantiles.get(k, 0.0) / r.max_act if r.max_act > 0 else 0.0 for k in qkeys]
            for r in rows
        ]
    ).reshape(n, len(qkeys))
    firing = np.column_stack(
        [
            np.log1p(n_fire),
            np.log10([r.firing_rate + 1e-7 for r in rows]),
            np.log1p([r.mean_act for r in rows]),
            np.log1p([r.max_act for r in rows]),
            np.log1p([len(t) for t in top_texts]),
        ]
    ).reshape(n, 5)
    tags, tag_names = tag_columns(rows, top_texts, text_concepts, taxonomy)
    X = np.hstack([reading, said, tokens, quant, firing, tags]).astype(np.float32)
    columns = (
        reading_names
        + said_names
        + token_names
        + [f"q{k}" for k in qkeys]
        + ["log_n_fire", "log_rate", "log_mean", "log_max", "log_n_top"]
        + tag_names
    )
    frequency = np.log1p(n_fire) / max(np.log1p(n_fire).max(initial=0.0), 1e-9)
    value = (0.05 + safety_votes) * frequency
    value = value / max(value.max(initial=0.0), 1e-12)
    prior = [_prior(r, len(t)) for r, t in zip(rows, top_texts, strict=True)]
    return FeatureMatrix(
        sae_id,
        features,
        X,
        columns,
        value.astype(np.float64),
        prior,
        _decoder(engine, sae_id, features),
        pattern_matrix([per_text for b in blocks for per_text in b.best], n),
        reader,
    )


def _prior(row: FeatureRow, n_top: int) -> tuple[str, float]:
    """Triage's answer before any human label: its concept for candidates, else benign."""
    if n_top < MIN_TOP:
        return UNINTERPRETABLE, 0.5
    if row.candidate and row.concept:
        return row.concept, float(row.precision or 0.5)
    return BENIGN, 0.5
