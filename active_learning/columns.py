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
from scipy import sparse
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import chunked
from safesail.db.tables import Feature
from safesail.experts.embed import Embedder, Prototypes, default_embedder
from safesail.experts.reader import Reader
from safesail.experts.windows import ReaderConfig, Reading, Window, feature_windows, read_window
from safesail.features.examples import TOP, examples_of
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


class WindowStats(NamedTuple):
    """Per feature (rows), what its content windows say: the mean of the reader's span/phrase
    prototype scores, the share of windows voting each label, the mean span and phrase
    embeddings and the spans' coherence. Per feature only, so blocks of features can be read
    apart and stacked (`stack`)."""

    mean_score: np.ndarray
    votes: np.ndarray
    mean_span: np.ndarray
    mean_phrase: np.ndarray
    coherence: np.ndarray

    @classmethod
    def stack(cls, parts: list[WindowStats]) -> WindowStats:
        return cls(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def window_stats(
    reads: list[list[Reading]], prototypes: Prototypes, embedder: Embedder
) -> WindowStats:
    """The `WindowStats` of these features' windows (every span and phrase embedded in one
    batch)."""
    config = ReaderConfig()
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
    return WindowStats(mean_score, votes, mean_span, mean_phrase, coherence)


def reading_columns(
    stats: WindowStats, labels: list[str], seed: int
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Columns of what the windows say, and each feature's share of safety votes (its value):
    the mean prototype scores and vote shares (`labels`: the prototypes' labels), the
    principal components of the mean embeddings (fitted over all features at once) and the
    spans' coherence."""
    X = np.hstack(
        [
            stats.mean_score,
            stats.votes,
            _pca(stats.mean_span, EMBED_COMPONENTS, seed),
            _pca(stats.mean_phrase, EMBED_COMPONENTS, seed),
            stats.coherence[:, None],
        ]
    )
    columns = (
        [f"proto:{c}" for c in labels]
        + [f"vote:{c}" for c in labels]
        + [f"span_pc{i}" for i in range(EMBED_COMPONENTS)]
        + [f"phrase_pc{i}" for i in range(EMBED_COMPONENTS)]
        + ["coherence"]
    )
    safety_votes = stats.votes[:, [j for j, c in enumerate(labels) if c != BENIGN]].sum(axis=1)
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
    rows: list[FeatureRow], top_texts: list[list[int]], text_concepts: dict, taxonomy: Taxonomy
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
    for i, texts in enumerate(top_texts):
        for text_id in texts:
            for c in set(text_concepts.get(text_id, ())):
                if c in col:
                    top[i, col[c]] += 1.0 / len(texts)
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


def pattern_matrix(best: list[dict[int, float]], n: int) -> sparse.csr_matrix:
    """Unit rows over the corpus texts: each feature's strongest activation per text among its
    stored examples (top contexts and decile samples; `best`, per feature)."""
    text_col: dict[int, int] = {}
    rows, cols, vals = [], [], []
    for i, per_text in enumerate(best):
        for text_id, act in per_text.items():
            if act > 0:
                rows.append(i)
                cols.append(text_col.setdefault(text_id, len(text_col)))
                vals.append(act)
    m = sparse.csr_matrix(
        (np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(n, max(len(text_col), 1))
    )
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sparse.csr_matrix(sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m)


class Block(NamedTuple):
    """What one block of features leaves behind once its examples and windows are dropped."""

    stats: WindowStats
    tokens: np.ndarray
    reader: list[tuple[str, int]]
    top_texts: list[list[int]]
    best: list[dict[int, float]]


def read_block(
    engine: Engine, sae_id: str, features: np.ndarray, taxonomy: Taxonomy, prototypes: Prototypes
) -> Block:
    """One block's per-feature columns, from its examples and top windows."""
    wanted = [int(f) for f in features]
    with Session(engine) as session:
        blobs = {
            index: blob
            for part in chunked(wanted)
            for index, blob in session.exec(
                select(Feature.index, Feature.examples).where(
                    Feature.sae_id == sae_id, Feature.index.in_(part)
                )
            )
        }
    top_texts: list[list[int]] = []
    best: list[dict[int, float]] = []
    for f in wanted:
        per_text: dict[int, float] = {}
        tops = []
        for e in examples_of(blobs[f]):
            per_text[e.text_id] = max(per_text.get(e.text_id, 0.0), float(e.max_act))
            if e.kind == TOP:
                tops.append(e.text_id)
        top_texts.append(tops)
        best.append(per_text)
    del blobs
    windows = feature_windows(engine, sae_id, wanted)
    config = ReaderConfig()
    reads = [[read_window(w, config) for w in windows.get(f, [])] for f in wanted]
    return Block(
        window_stats(reads, prototypes, default_embedder()),
        token_columns(reads)[0],
        reader_answers(windows, features, taxonomy),
        top_texts,
        best,
    )
