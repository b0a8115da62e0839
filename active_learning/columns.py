"""The label-free columns of the feature matrix (`active_learning.features`): what an annotator
reads of each SAE feature in its Label Studio task, built from the same windows the task shows
(`safesail.experts.windows`), and the optional corpus-tag and triage columns beside them.

- reading: MiniLM embeddings (`safesail.experts.embed`, the reader's encoder) of each window's
  marked span and of the phrase around it, as their per-concept prototype scores, each
  concept's share of the windows' votes, a few principal components of the mean span and
  phrase embeddings, and how alike the spans are;
- tokens: the token classes of the peaks' whole words (`safesail.features.token_kinds`), word
  pieces, text edges, one token throughout;
- the reader's answer: the label the project's simulated expert (`safesail.experts.reader`)
  gives from the same windows and embeddings, and its 1-5 confidence;
- tags: the corpus-tag statistics and triage's results, named `tag:...` (`TAG_PREFIX`), so
  every figure can be reported without them.

The firing columns (density, quantiles, rate) read only the feature's own row and are built
with the matrix.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np

from safesail.experts.embed import Embedder, Prototypes, default_embedder
from safesail.experts.reader import Reader
from safesail.experts.windows import ReaderConfig, Reading, Window
from safesail.features.token_kinds import CONTENT, NON_CONTENT
from safesail.taxonomy import BENIGN, UNINTERPRETABLE, Taxonomy

EMBED_COMPONENTS = 16
"""Principal components kept of the mean span and of the mean phrase embedding."""
TAG_PREFIX = "tag:"
"""Columns made of corpus tags or triage's results (optional: `features.tag_free`)."""
KINDS = (CONTENT, *NON_CONTENT)


class FeatureRow(NamedTuple):
    """The Feature columns the representation reads, selected as plain columns (as triage
    reads them): no ORM object per feature."""

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


def _pca(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first k principal components (zero-padded when there are fewer rows or dims)."""
    from sklearn.decomposition import PCA

    out = np.zeros((len(vectors), k), dtype=np.float32)
    m = min(k, len(vectors) - 1, vectors.shape[1])
    if m >= 1:
        out[:, :m] = PCA(n_components=m, random_state=seed).fit_transform(vectors)
    return out


def reading_columns(
    reads: list[list[Reading]], taxonomy: Taxonomy, embedder: Embedder, seed: int
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Columns of what the windows say, and each feature's share of safety votes (its value):
    per window, the reader's span/phrase prototype scores; per feature, their means and vote
    shares over its content windows, the embeddings' principal components and the spans'
    coherence."""
    config = ReaderConfig()
    prototypes = Prototypes(taxonomy, embedder)
    labels = prototypes.labels
    n = len(reads)
    flat = [r for rs in reads for r in rs if r.kind == CONTENT]
    spans = embedder(r.span for r in flat)
    phrases = embedder(r.phrase for r in flat)
    w = config.span_weight
    scores = (
        w * prototypes.scores(spans) + (1 - w) * prototypes.scores(phrases)
        if flat
        else np.zeros((0, len(labels)), dtype=np.float32)
    )
    dim = spans.shape[1]
    mean_score = np.zeros((n, len(labels)), dtype=np.float32)
    votes = np.zeros_like(mean_score)
    mean_span = np.zeros((n, dim), dtype=np.float32)
    mean_phrase = np.zeros_like(mean_span)
    coherence = np.zeros(n, dtype=np.float32)
    start = 0
    for i, rs in enumerate(reads):
        m = sum(r.kind == CONTENT for r in rs)
        if not m:
            continue
        part = slice(start, start + m)
        start += m
        mean_score[i] = scores[part].mean(axis=0)
        votes[i] = np.bincount(scores[part].argmax(axis=1), minlength=len(labels)) / m
        mean_span[i] = spans[part].mean(axis=0)
        mean_phrase[i] = phrases[part].mean(axis=0)
        if m > 1:
            sim = spans[part] @ spans[part].T
            coherence[i] = (sim.sum() - np.trace(sim)) / (m * (m - 1))
    X = np.hstack(
        [
            mean_score,
            votes,
            _pca(mean_span, EMBED_COMPONENTS, seed),
            _pca(mean_phrase, EMBED_COMPONENTS, seed),
            coherence[:, None],
        ]
    )
    columns = (
        [f"proto:{c}" for c in labels]
        + [f"vote:{c}" for c in labels]
        + [f"span_pc{i}" for i in range(EMBED_COMPONENTS)]
        + [f"phrase_pc{i}" for i in range(EMBED_COMPONENTS)]
        + ["coherence"]
    )
    safety_votes = votes[:, [j for j, c in enumerate(labels) if c != BENIGN]].sum(axis=1)
    return X.astype(np.float32), columns, safety_votes


def token_columns(reads: list[list[Reading]]) -> tuple[np.ndarray, list[str]]:
    """Per feature, over its windows: the share of each token class of the peaks' whole words,
    of word pieces, of peaks at a text's edge, of the commonest peak token, the windows' mean
    firing density and how many windows there are."""
    rows = []
    for rs in reads:
        m = max(len(rs), 1)
        kinds = Counter(r.kind for r in rs)
        tokens = Counter(r.peak_token.strip().lower() for r in rs)
        rows.append(
            [kinds.get(k, 0) / m for k in KINDS]
            + [
                sum(r.fragment for r in rs) / m,
                sum(r.at_edge for r in rs) / m,
                (tokens.most_common(1)[0][1] / m) if rs else 0.0,
                float(np.mean([r.density for r in rs])) if rs else 0.0,
                np.log1p(len(rs)),
            ]
        )
    columns = [f"kind:{k}" for k in KINDS] + [
        "piece_share",
        "edge_share",
        "same_token_share",
        "window_density",
        "log_n_windows",
    ]
    return np.asarray(rows, dtype=np.float32).reshape(len(reads), len(columns)), columns


def tag_columns(
    rows: list[FeatureRow], tops: list[list], text_concepts: dict, taxonomy: Taxonomy
) -> tuple[np.ndarray, list[str]]:
    """The optional corpus-tag and triage columns: per concept, the share of firing texts, the
    level there, their lift over the mean, the top contexts' concepts and their lift over the
    corpus; triage's score, AUROC, precision, candidacy and concept."""
    concepts = [c for c in taxonomy.concepts if c != UNINTERPRETABLE]
    safety = taxonomy.safety_concepts()
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
    for i, exs in enumerate(tops):
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
    auroc = np.array([r.auroc if r.auroc is not None else 0.5 for r in rows])
    triage = np.column_stack(
        [
            [r.safety_score or 0.0 for r in rows],
            auroc,
            [r.precision or 0.0 for r in rows],
            [float(r.candidate) for r in rows],
        ]
    ).reshape(n, 4)
    best = np.zeros((n, len(safety)))
    for i, row in enumerate(rows):
        if row.concept in safety:
            best[i, safety.index(row.concept)] = auroc[i] - 0.5
    names = (
        [f"frac:{c}" for c in concepts]
        + [f"level:{c}" for c in concepts]
        + [f"lift:{c}" for c in concepts]
        + [f"top:{c}" for c in concepts]
        + [f"top_lift:{c}" for c in concepts]
        + ["safety_score", "auroc", "precision", "candidate"]
        + [f"triage:{c}" for c in safety]
    )
    X = np.hstack([frac, level, lift, top, top_lift, triage, best])
    return X.astype(np.float32), [TAG_PREFIX + c for c in names]


def reader_answers(
    windows: dict[int, list[Window]], features: np.ndarray, taxonomy: Taxonomy
) -> list[tuple[str, int]]:
    """The reader's (first label, confidence) per feature, from the windows the columns read;
    it shares the process's embedder, whose cache already holds every span and phrase."""
    answers = Reader(taxonomy, embedder=default_embedder()).read(
        {int(f): windows.get(int(f), []) for f in features}
    )
    return [(answers[int(f)].labels[0], answers[int(f)].confidence) for f in features]


def reader_columns(
    reader: list[tuple[str, int]], taxonomy: Taxonomy
) -> tuple[np.ndarray, list[str]]:
    """Per label the reader can give, its confidence / 5 where it gave it (else 0)."""
    labels = [*taxonomy.safety_concepts(), BENIGN, UNINTERPRETABLE]
    X = np.zeros((len(reader), len(labels)), dtype=np.float32)
    for i, (label, confidence) in enumerate(reader):
        if label in labels:
            X[i, labels.index(label)] = confidence / 5
    return X, [f"reader:{c}" for c in labels]
