"""Rank candidate SAEs by concept-specific interpretability and triage their safety features.

Safe-SAIL explains features of *one* SAE, so the SAE has to be chosen first, and the
choice should favour the dictionary whose features line up with the safety concepts we
want explained, not the one with the best reconstruction. For each safety concept we
contrast its texts with benign texts and ask: how well does the single best feature
separate them (AUROC), how many features separate them (Safe-SAIL's "L0 at threshold"),
and how well does a sparse probe on a handful of features do (SAEBench-style F1).

Every function takes ``X``: one row per text, one column per SAE feature, holding the
feature's MAX activation over the text's tokens (0 where it never fires). ``X`` may be a
scipy sparse matrix/array or a dense numpy array; it is never densified as a whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safesail.errors import SafesailError
from safesail.tokens import (
    DIGIT,
    FORMAT,
    FUNCTION,
    NON_CONTENT,
    PUNCTUATION,
    token_class,
    word_span,
)

if TYPE_CHECKING:  # collect imports torch; selection stays numpy and sklearn only
    from safesail.collect import ConceptTokenCounts

BENIGN = "benign"

# Weights of the per-concept selection score; they sum to 1 so the score stays in [0, 1].
_W_SPECIFIC = 0.45
_W_PROBE = 0.45
_W_CONCENTRATION = 0.10


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_fraction(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


Contrast = Literal["rest", "benign"]


@dataclass(frozen=True)
class SelectionConfig:
    """How candidate SAEs are scored against the safety concepts."""

    threshold_auroc: float = 0.75
    """A feature "separates" a concept when its AUROC against benign texts is >= this."""
    probe_features: int = 5
    """How many top-AUROC features the sparse probe may use (SAEBench uses a handful)."""
    probe_folds: int = 3
    """Stratified cross-validation folds for the probe F1."""
    min_texts: int = 10
    """Concepts with fewer positive (or benign) texts than this are skipped and reported."""
    fire_fraction: float = 0.2
    """A feature fires on a text above this fraction of its max activation (for specificity)."""
    contrast: Contrast = "rest"
    """What a concept's texts are contrasted with: every text without the concept ("rest",
    benign and other concepts alike) or benign texts only ("benign")."""
    seed: int = 0
    """Seed of the fold shuffling, so scores are reproducible."""

    def __post_init__(self) -> None:
        if isinstance(self.threshold_auroc, bool) or not isinstance(
            self.threshold_auroc, int | float
        ):
            raise ValueError(f"threshold_auroc must be a number, got {self.threshold_auroc!r}")
        if not 0.5 < self.threshold_auroc <= 1.0:
            raise ValueError(
                f"threshold_auroc must be in (0.5, 1] (0.5 is chance), got {self.threshold_auroc}"
            )
        _require_int("probe_features", self.probe_features, 1)
        _require_int("probe_folds", self.probe_folds, 2)
        _require_int("min_texts", self.min_texts, 2)
        if self.min_texts < self.probe_folds:
            raise ValueError(
                f"min_texts ({self.min_texts}) must be >= probe_folds ({self.probe_folds}) so "
                "every fold holds texts of both classes"
            )
        _require_int("seed", self.seed, 0)
        _require_fraction("fire_fraction", self.fire_fraction, 0.0, 1.0)
        _require_contrast(self.contrast)


class ConceptScore(NamedTuple):
    """How well one SAE separates one safety concept from benign texts."""

    concept: str
    n_pos: int
    n_neg: int
    best_auroc: float
    best_feature: int
    best_specificity: float
    """Max over features of (2*auroc - 1) * frac_pos * (1 - frac_neg): one feature that is
    strong on the concept AND quiet on its contrast texts (the same measure triage ranks by)."""
    specific_feature: int
    n_separating: int
    """Features with AUROC >= threshold_auroc (Safe-SAIL's L0 at threshold)."""
    probe_f1: float
    """Mean F1 over stratified folds of a logistic probe on the top features of each
    TRAIN fold (features are re-ranked per fold, so the test fold never chooses them)."""


class SaeScore(NamedTuple):
    """The selection score of one SAE and what it is made of."""

    score: float
    """Mean over scored concepts of 0.45*best_specificity + 0.45*chance-corrected
    probe_f1 + 0.10/n_separating (0 if none separates), in [0, 1]; see ``score_sae``."""
    concepts: list[ConceptScore]
    skipped: dict[str, str]
    """Concept -> why it was not scored (too few texts)."""


class FeatureSelectivity(NamedTuple):
    """Per-feature evidence of safety relevance, one row per scored concept."""

    auroc: np.ndarray
    """[n_concepts, d_sae] AUROC of each feature for concept texts vs contrast texts."""
    frac_pos: np.ndarray
    """[n_concepts, d_sae] fraction of the concept's texts on which the feature fires."""
    frac_neg: np.ndarray
    """[n_concepts, d_sae] fraction of the concept's contrast texts on which it fires."""
    n_pos: np.ndarray
    """[n_concepts] texts per concept."""
    n_neg: np.ndarray
    """[n_concepts] contrast texts per concept."""
    concepts: list[str]
    """Row names of ``auroc``/``frac_pos``: the safety concepts that have any texts."""


@dataclass(frozen=True)
class TriageConfig:
    """When a feature counts as a safety candidate for a concept."""

    min_precision: float = 0.3
    """Of the texts the feature fires on, at least this share must carry the concept (tested
    on the 95% Wilson lower bound, so a feature firing on a handful of texts cannot pass by
    luck)."""
    min_support: int = 5
    """... and it must fire on at least this many of the concept's texts."""
    fire_fraction: float = 0.5
    """A text counts as fired on above this fraction of the feature's max activation (Safe-SAIL
    normalises each neuron by its own scale); a candidate is judged by where it fires strongly."""
    alpha: float = 0.05
    """Family-wise error rate of "fires on the concept more often than its base rate", a
    one-sided binomial test Bonferroni-corrected over features x concepts: among thousands
    of features some would look precise by luck."""
    contrast: Contrast = "rest"
    """Contrast texts: every text without the concept ("rest") or benign texts ("benign")."""
    max_density: float = 7.0
    """A feature firing on the tokens of its contrast texts (the texts without its concept)
    at more than this multiple of the SAE's mean feature firing rate (L0 / d_sae: 0.7% for
    the demo's, so about 5%) is rejected: it fires on whatever text it is in, and its peaks
    in concept texts say where those texts are, not what they mean. Relative, because what
    is dense depends on the SAE's sparsity; counted outside the concept, so that a feature
    firing on every token of violence texts and on nothing else stays a violence feature."""
    max_non_content: float = 0.5
    """A feature whose top contexts peak on a function word, punctuation, a digit or a format
    token in more than this share of them is rejected: those tokens occur in every kind of
    text, so the concept lies in the texts around the peak, not in what the feature reads."""
    min_term_share: float = 0.25
    """At least this share of a feature's top contexts must peak on a safety concept's term,
    else it is rejected: a taxonomy keyword or term (``Concept.terms``) that holds the peak
    word, or a neighbour marked as strongly (" terrorist", "sexual intercourse", " DAN").
    Content words that merely co-occur with a concept in this corpus (" ChatGPT" in
    jailbreak prompts, "alma mater" in questions about senators) are what the texts are
    about, not what the feature means. Applied when the candidate's concept has keywords or
    terms; the terms found may be any safety concept's."""

    def __post_init__(self) -> None:
        _require_fraction("min_precision", self.min_precision, 0.0, 1.0)
        _require_int("min_support", self.min_support, 1)
        _require_fraction("alpha", self.alpha, 0.0, 1.0)
        _require_fraction("fire_fraction", self.fire_fraction, 0.0, 1.0)
        _require_contrast(self.contrast)
        if isinstance(self.max_density, bool) or not isinstance(self.max_density, int | float):
            raise ValueError(f"max_density must be a number, got {self.max_density!r}")
        if self.max_density <= 0:
            raise ValueError(f"max_density must be > 0, got {self.max_density}")
        _require_fraction("max_non_content", self.max_non_content, 0.0, 1.0)
        _require_fraction("min_term_share", self.min_term_share, 0.0, 1.0)


class Candidate(NamedTuple):
    """A feature that looks safety-relevant, with the concept it is most selective for."""

    feature: int
    concept: str
    auroc: float
    precision: float
    """Share of the texts it fires on (concept + contrast) that carry the concept."""
    precision_low: float
    """95% Wilson lower bound of ``precision`` (what ``min_precision`` is tested on)."""
    p_value: float
    """One-sided binomial p-value of the firing texts' concept share against its base rate."""
    support: int
    """Concept texts it fires on."""
    frac_pos: float
    frac_neg: float
    score: float
    """F1 of "the feature fires" as a detector of the concept, in [0, 1]."""


def _as_sparse(X: object, fmt: str) -> sp.csr_array | sp.csc_array:
    """A float copy of ``X`` in ``fmt`` without stored zeros, validated once for all callers.

    A copy, because removing stored zeros must not mutate the caller's matrix; removing
    them matters because the AUROC treats every zero as one tied block.
    """
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D [n_texts, d_sae], got shape {X.shape}")
    out = (sp.csr_array if fmt == "csr" else sp.csc_array)(X, dtype=np.float64, copy=True)
    out.eliminate_zeros()
    if not np.isfinite(out.data).all():
        raise ValueError("X holds NaN or infinite activations")
    return out


def auroc_per_feature(X: object, positive: np.ndarray) -> np.ndarray:
    """Exact Mann-Whitney AUROC of every column of ``X`` for ``positive`` vs the other rows.

    Ties get average ranks, as in ``sklearn.metrics.roc_auc_score``. SAE activations are
    mostly zero, so only the nonzeros of each column are sorted (all columns in one pass)
    and the zeros are handled as a single tied block whose average rank is known in
    closed form. Cost is O(nnz log nnz), independent of the zero count.
    Negative values are also ranked correctly (they sit below the zero block).
    """
    Xc = _as_sparse(X, "csc")
    n, d = Xc.shape
    pos = np.asarray(positive)
    if pos.dtype != bool or pos.shape != (n,):
        raise ValueError(
            f"positive must be a bool array of shape ({n},), got {pos.dtype} {pos.shape}"
        )
    n1 = int(pos.sum())
    n0 = n - n1
    if n1 == 0 or n0 == 0:
        raise ValueError(f"AUROC needs both classes, got {n1} positive and {n0} negative rows")

    nnz_per_col = np.diff(Xc.indptr)
    # Sort by (column, value): by value first, then stably by column. This is several times
    # faster than np.lexsort; with uint16 column ids the stable pass is a radix sort.
    cols = np.repeat(np.arange(d, dtype=np.uint16 if d <= 1 << 16 else np.int64), nnz_per_col)
    by_value = np.argsort(Xc.data)
    order = by_value[np.argsort(cols[by_value], kind="stable")]
    values, cols = Xc.data[order], cols[order]
    is_pos = pos[Xc.indices[order]]

    # Average 1-based rank among the column's nonzeros: mean of the first and last
    # position of each run of equal (column, value).
    k = len(values)
    in_col = np.arange(k) - Xc.indptr[cols]
    starts = np.ones(k, dtype=bool)
    starts[1:] = (values[1:] != values[:-1]) | (cols[1:] != cols[:-1])
    run = np.cumsum(starts) - 1
    run_starts = np.flatnonzero(starts)
    run_ends = np.append(run_starts[1:], k) - 1
    rank = (in_col[run_starts] + in_col[run_ends])[run] / 2.0 + 1.0

    n_zero = n - nnz_per_col
    n_below_zero = np.bincount(cols[values < 0], minlength=d)
    rank += np.where(values > 0, n_zero[cols], 0)
    zero_rank = n_below_zero + (n_zero + 1) / 2.0

    # float even when no positive row has a nonzero (bincount of nothing is int64)
    rank_sum = np.bincount(cols[is_pos], weights=rank[is_pos], minlength=d).astype(np.float64)
    pos_zeros = n1 - np.bincount(cols[is_pos], minlength=d)
    rank_sum += pos_zeros * zero_rank
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def _label_sets(concepts: Sequence[Sequence[str]], n_texts: int) -> list[frozenset[str]]:
    if len(concepts) != n_texts:
        raise ValueError(f"got {len(concepts)} label lists for {n_texts} rows of X")
    out = []
    for i, labels in enumerate(concepts):
        if isinstance(labels, str):
            # A bare string is a Sequence[str] too; iterating it would yield letters.
            raise ValueError(f"labels of text {i} must be a list of concept names, got {labels!r}")
        names = frozenset(labels)
        if BENIGN in names and len(names) > 1:
            others = sorted(names - {BENIGN})
            raise SafesailError(f"text {i} is labelled {BENIGN!r} and also {others}")
        out.append(names)
    return out


def _concept_names(safety_concepts: Sequence[str]) -> list[str]:
    if isinstance(safety_concepts, str):
        raise ValueError(f"safety_concepts must be a list of names, got {safety_concepts!r}")
    names = list(dict.fromkeys(safety_concepts))
    if not names:
        raise ValueError("safety_concepts is empty")
    if BENIGN in names:
        raise ValueError(f"{BENIGN!r} is the contrast class, not a safety concept")
    return names


def _mask(labels: list[frozenset[str]], name: str) -> np.ndarray:
    return np.fromiter((name in s for s in labels), dtype=bool, count=len(labels))


def _negatives(pos: np.ndarray, benign: np.ndarray, contrast: Contrast) -> np.ndarray:
    """The texts a concept is contrasted with.

    "rest" (the default) keeps every text without the concept. Then a feature that merely
    tracks the style safety prompts share (requests, chat framing) does not look specific to
    any one concept, which it would against benign text of another style.
    """
    return ~pos if contrast == "rest" else benign


def _require_contrast(contrast: object) -> None:
    if contrast not in ("rest", "benign"):
        raise ValueError(f"contrast must be 'rest' or 'benign', got {contrast!r}")


def _top_features(auroc: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest AUROCs; ties go to the lower index, for determinism."""
    return np.argsort(-auroc, kind="stable")[:k]


def _probe_f1(X: sp.csr_array, y: np.ndarray, config: SelectionConfig) -> float:
    """Cross-validated F1 of a logistic probe on the top features chosen per TRAIN fold.

    Choosing the features on all rows would let the test fold pick them, and among
    thousands of noise features some always separate a small sample by chance.
    """
    k = min(config.probe_features, X.shape[1])
    folds = StratifiedKFold(n_splits=config.probe_folds, shuffle=True, random_state=config.seed)
    f1s = []
    for train, test in folds.split(np.zeros(len(y)), y):
        top = _top_features(auroc_per_feature(X[train], y[train]), k)
        X_top = X[:, top].toarray()
        # Balanced weights: concepts are often much rarer than benign texts.
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000)
        )
        probe.fit(X_top[train], y[train])
        f1s.append(f1_score(y[test], probe.predict(X_top[test]), zero_division=0.0))
    return float(np.mean(f1s))


def _fires(X: sp.csr_array, fire_fraction: float) -> sp.csr_array:
    """1 where a feature's activation on a text exceeds fire_fraction of its own max."""
    fires = X.copy()
    peak = X.max(axis=0).toarray().ravel() if X.shape[0] else np.zeros(X.shape[1])
    fires.data = (fires.data > fire_fraction * peak[fires.indices]).astype(np.float64)
    return fires


def _specificity(auroc: np.ndarray, frac_pos: np.ndarray, frac_neg: np.ndarray) -> np.ndarray:
    return np.clip(2.0 * auroc - 1.0, 0.0, None) * frac_pos * (1.0 - frac_neg)


def _score_concept(
    X: sp.csr_array,
    fires: sp.csr_array,
    pos: np.ndarray,
    neg: np.ndarray,
    name: str,
    config: SelectionConfig,
) -> ConceptScore:
    rows = np.flatnonzero(pos | neg)
    X_sub, y = X[rows], pos[rows]
    auroc = auroc_per_feature(X_sub, y)
    best = int(np.argmax(auroc))
    specificity = _specificity(auroc, (pos @ fires) / pos.sum(), (neg @ fires) / neg.sum())
    specific = int(np.argmax(specificity))
    return ConceptScore(
        concept=name,
        n_pos=int(pos.sum()),
        n_neg=int(neg.sum()),
        best_auroc=float(auroc[best]),
        best_feature=best,
        best_specificity=float(specificity[specific]),
        specific_feature=specific,
        n_separating=int((auroc >= config.threshold_auroc).sum()),
        probe_f1=_probe_f1(X_sub, y, config),
    )


def _chance_corrected_f1(c: ConceptScore) -> float:
    """F1 rescaled so that predicting every text positive (what a useless probe does) is 0."""
    p = c.n_pos / (c.n_pos + c.n_neg)
    chance = 2 * p / (1 + p)
    return max(0.0, (c.probe_f1 - chance) / (1 - chance))


def _concept_value(c: ConceptScore) -> float:
    concentration = 1.0 / c.n_separating if c.n_separating else 0.0
    return (
        _W_SPECIFIC * c.best_specificity
        + _W_PROBE * _chance_corrected_f1(c)
        + _W_CONCENTRATION * concentration
    )


def score_sae(
    X: object,
    concepts: Sequence[Sequence[str]],
    safety_concepts: Sequence[str],
    config: SelectionConfig = SelectionConfig(),
) -> SaeScore:
    """Score one SAE by how interpretable its features are for the safety concepts.

    Per scored concept (its texts vs the contrast texts, see ``SelectionConfig.contrast``)
    the value is

        0.45 * best_specificity           # the best single feature: (2*auroc - 1) * frac_pos
                                          #   * (1 - frac_neg), so chance and always-on are 0
      + 0.45 * corrected probe_f1         # a few features together, cross-validated, rescaled
                                          # so an all-positive guess (F1 = 2p/(1+p)) is 0
      + 0.10 * (1 / n_separating, or 0 when no feature separates)

    and ``score`` is its mean over the scored concepts, in [0, 1]. The first two terms
    reward an SAE that *has* features for the concept; the small concentration term
    breaks near-ties in favour of an SAE whose concept lives in few features (Safe-SAIL's
    low "L0 at threshold"), because then explaining those few features explains the
    concept. It is kept small since splitting a concept into several clean features is
    not bad in itself. Concepts with fewer than ``min_texts`` texts (or contrast texts) are
    skipped and listed in ``skipped``; they are skipped for every SAE scored on the same
    texts, so scores stay comparable.
    """
    Xr = _as_sparse(X, "csr")
    labels = _label_sets(concepts, Xr.shape[0])
    names = _concept_names(safety_concepts)
    benign = _mask(labels, BENIGN)
    fires = _fires(Xr, config.fire_fraction)
    scored: list[ConceptScore] = []
    skipped: dict[str, str] = {}
    counts: dict[str, str] = {}
    for name in names:
        pos = _mask(labels, name)
        neg = _negatives(pos, benign, config.contrast)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        counts[name] = f"{n_pos}/{n_neg}"
        if n_pos < config.min_texts or n_neg < config.min_texts:
            skipped[name] = (
                f"{n_pos} concept texts and {n_neg} contrast texts ({config.contrast}); "
                f"need at least {config.min_texts} of each"
            )
            continue
        scored.append(_score_concept(Xr, fires, pos, neg, name, config))
    if not scored:
        got = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise SafesailError(
            f"no safety concept has enough texts to score an SAE: each concept needs at least "
            f"{config.min_texts} texts and {config.min_texts} contrast texts "
            f"({config.contrast}: {'all other' if config.contrast == 'rest' else BENIGN} texts); "
            f"got concept/contrast counts {got}"
        )
    score = float(np.mean([_concept_value(c) for c in scored]))
    return SaeScore(score=score, concepts=scored, skipped=skipped)


def rank_saes(scores: dict[str, SaeScore]) -> list[tuple[str, SaeScore]]:
    """SAEs best first; equal scores are ordered by name so the ranking is reproducible."""
    return sorted(scores.items(), key=lambda item: (-item[1].score, item[0]))


def feature_selectivity(
    X: object,
    concepts: Sequence[Sequence[str]],
    safety_concepts: Sequence[str],
    fire_fraction: float = 0.0,
    contrast: Contrast = "rest",
) -> FeatureSelectivity:
    """How selectively each feature fires on each safety concept rather than on its contrast
    texts (every other text for "rest", benign texts for "benign").

    AUROC alone can be high for a feature that fires on a sliver of the concept's texts,
    or for one that fires on nearly everything but a bit more strongly on the concept, so
    firing rates are kept alongside it for ``triage``. Concepts without any text are left
    out (``concepts`` names the rows); concepts with only a few texts are kept, so filter
    them first (e.g. by ``score_sae``'s ``skipped``) if their noise matters.

    A feature counts as firing on a text when its activation there exceeds ``fire_fraction``
    of the feature's largest activation (Safe-SAIL normalises by each neuron's own scale):
    a faint echo on other text should not disqualify a feature that is strong on the concept.
    """
    _require_fraction("fire_fraction", fire_fraction, 0.0, 1.0)
    _require_contrast(contrast)
    Xr = _as_sparse(X, "csr")
    labels = _label_sets(concepts, Xr.shape[0])
    names = _concept_names(safety_concepts)
    benign = _mask(labels, BENIGN)
    if contrast == "benign" and not benign.any():
        raise SafesailError(f"feature selectivity needs {BENIGN!r} texts to contrast with")
    fires = _fires(Xr, fire_fraction)
    masks = {name: m for name in names if (m := _mask(labels, name)).any()}
    if not masks:
        raise SafesailError(f"none of the safety concepts {names} labels any text")
    d = Xr.shape[1]
    auroc = np.empty((len(masks), d))
    frac_pos = np.empty((len(masks), d))
    frac_neg = np.empty((len(masks), d))
    for i, pos in enumerate(masks.values()):
        neg = _negatives(pos, benign, contrast)
        if not neg.any():
            raise SafesailError(f"no texts to contrast {names[i]!r} with ({contrast})")
        rows = np.flatnonzero(pos | neg)
        auroc[i] = auroc_per_feature(Xr[rows], pos[rows])
        frac_pos[i] = (pos @ fires) / pos.sum()
        frac_neg[i] = (neg @ fires) / neg.sum()
    n_pos = np.array([m.sum() for m in masks.values()])
    n_neg = np.array([_negatives(m, benign, contrast).sum() for m in masks.values()])
    return FeatureSelectivity(auroc, frac_pos, frac_neg, n_pos, n_neg, list(masks))


def _wilson_lower(successes: np.ndarray, trials: np.ndarray, z: float = 1.96) -> np.ndarray:
    """Lower end of the Wilson score interval of a proportion (0 where there are no trials)."""
    n = np.maximum(trials, 1e-12)
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return np.where(trials > 0, (centre - margin) / (1 + z * z / n), 0.0)


class _TextEvidence(NamedTuple):
    """Text-level triage arrays, [n_concepts, d_sae] each."""

    precision: np.ndarray
    low: np.ndarray
    support: np.ndarray
    p_value: np.ndarray
    f1: np.ndarray
    ok: np.ndarray
    """The feature passes every text-level gate for the concept."""


def _text_evidence(sel: FeatureSelectivity, config: TriageConfig) -> _TextEvidence:
    support = sel.frac_pos * sel.n_pos[:, None]
    fired = support + sel.frac_neg * sel.n_neg[:, None]
    precision = np.divide(support, fired, out=np.zeros_like(support), where=fired > 0)
    recall = sel.frac_pos
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(recall),
        where=precision + recall > 0,
    )
    low = _wilson_lower(support, fired)
    base_rate = (sel.n_pos / np.maximum(sel.n_pos + sel.n_neg, 1))[:, None]
    hits, trials = np.rint(support), np.rint(fired)
    p_value = binom.sf(hits - 1, trials, base_rate)
    ok = (
        (low >= config.min_precision)
        & (support >= config.min_support - 1e-9)
        & (p_value <= config.alpha / max(support.size, 1))
    )
    return _TextEvidence(precision, low, support, p_value, f1, ok)


def triage(sel: FeatureSelectivity, config: TriageConfig | None = None) -> list[Candidate]:
    """Mark the features worth explaining in safety terms, most selective first.

    A feature qualifies for a concept when, of the texts it fires on, enough carry the
    concept (precision, by its Wilson lower bound), more than chance would give (binomial
    test against the concept's base rate, Bonferroni over features x concepts), and it fires
    on enough of them (support). Precision, not AUROC,
    is the gate: a sparse feature that fires on 5% of violence texts and on nothing else
    is a clean violence feature, but its AUROC is only ~0.53. Each qualifying feature is
    reported once, under the concept where its score (the F1 of firing as a detector of
    the concept) is highest (ties: the earlier concept); candidates are sorted by score
    (ties: lower feature index).

    This is the text-level half of triage: *where* a feature fires. What it fires on is
    judged afterwards, per candidate, by ``token_rejection``.
    """
    config = config or TriageConfig()
    ev = _text_evidence(sel, config)
    features = np.flatnonzero(ev.ok.any(axis=0))
    if not features.size:
        return []
    score = np.where(ev.ok, ev.f1, -np.inf)
    best = np.argmax(score[:, features], axis=0)
    candidates = [
        Candidate(
            feature=int(f),
            concept=sel.concepts[c],
            auroc=float(sel.auroc[c, f]),
            precision=float(ev.precision[c, f]),
            precision_low=float(ev.low[c, f]),
            p_value=float(ev.p_value[c, f]),
            support=round(float(ev.support[c, f])),
            frac_pos=float(sel.frac_pos[c, f]),
            frac_neg=float(sel.frac_neg[c, f]),
            score=float(score[c, f]),
        )
        for f, c in zip(features, best, strict=True)
    ]
    return sorted(candidates, key=lambda cand: (-cand.score, cand.feature))


# Kinds of triage rejection: every stored reason reads "<kind>: <detail>" (see reason_kind).
TEXT_LEVEL = "text level"
"""No concept is enriched among the texts the feature fires on (the text-level gates)."""
DENSE = "dense"
"""Fires outside its concept's texts at more than ``max_density`` x the mean feature rate."""
NO_TERM = "no concept term"
"""Too few top contexts peak on a safety keyword (``min_term_share``)."""


def reason_kind(reason: str) -> str:
    """The kind of a stored rejection reason: TEXT_LEVEL, DENSE, a non-content token class
    (tokens.FUNCTION, PUNCTUATION, DIGIT, FORMAT) or NO_TERM."""
    return reason.split(":", 1)[0]


def text_rejections(sel: FeatureSelectivity, config: TriageConfig | None = None) -> dict[int, str]:
    """Why each feature that passes no text-level gate set is not a candidate, for the
    concept where it came closest (highest precision lower bound): the first gate it fails."""
    config = config or TriageConfig()
    ev = _text_evidence(sel, config)
    out = {}
    for f in np.flatnonzero(~ev.ok.any(axis=0)):
        c = int(np.argmax(ev.low[:, f]))
        name, support, low = sel.concepts[c], round(float(ev.support[c, f])), ev.low[c, f]
        if not (sel.frac_pos[:, f].any() or sel.frac_neg[:, f].any()):
            detail = "fires on no text"
        elif support < config.min_support:
            detail = f"fires on {support} {name} texts (needs {config.min_support})"
        elif low < config.min_precision:
            detail = (
                f"{ev.precision[c, f]:.0%} of the texts it fires on are {name} (lower bound "
                f"{low:.2f} < {config.min_precision})"
            )
        else:
            detail = (
                f"its {name} share is within chance of the base rate (p={ev.p_value[c, f]:.2g})"
            )
        out[int(f)] = f"{TEXT_LEVEL}: {detail}"
    return out


class Peak(NamedTuple):
    """Where one context of a feature peaks: the word a reader sees marked first."""

    word: str
    """The whole word holding the peak token (``tokens.word_at``: " ChatGPT", not "GPT")."""
    text_id: int
    top: bool
    """A top-activating context (else a random sample from one of its activation deciles)."""
    terms: tuple[str, ...] | None = None
    """Safety concepts one of whose terms (keywords) holds the peak word, or a word the
    feature marks as strongly next to it (None: not looked up)."""


TERM_WINDOW = (6, 4)
"""Tokens around the peak word searched for a keyword that contains it: enough for phrases
such as "ignore all previous instructions" or "sexual intercourse"."""

MARKED = 0.75
"""A token around the peak counts as marked as strongly as the peak when the feature fires on
it at this share of the peak or more: a reader sees every highlighted token, and a feature
that fires on a whole request ("steals passwords from his email account") is judged by all
of it. Weaker neighbours do not count, or a term merely near the peak would ("alma mater of
Senator X")."""

TermMatcher = Callable[[str, int, int], Sequence[str]]
"""(lowercased text, start, end) -> safety concepts with a keyword overlapping text[start:end]
(``Taxonomy.keywords_at``)."""


def _terms_near_peak(
    toks: Sequence[str], acts: np.ndarray, peak: tuple[int, int], terms: TermMatcher
) -> tuple[str, ...]:
    """Concepts whose term holds the peak word, or another word around it that the feature
    marks as strongly (a reader sees every marked token, not only the strongest)."""
    a, b = max(0, peak[0] - TERM_WINDOW[0]), min(len(toks), peak[1] + TERM_WINDOW[1])
    pieces = [t.lower() for t in toks[a:b]]
    starts = np.concatenate([[0], np.cumsum([len(t) for t in pieces])])
    text = "".join(pieces)
    marked = {peak}
    level = MARKED * float(acts[peak[0] : peak[1]].max())
    for i in range(a, b):
        if acts[i] >= level:
            marked.add(word_span(toks, i))
    found: dict[str, None] = {}
    for lo, hi in sorted(marked):
        lo, hi = max(lo, a), min(hi, b)
        for name in terms(text, int(starts[lo - a]), int(starts[hi - a])):
            found[name] = None
    return tuple(found)


def peaks_of(
    examples: Sequence[Any],
    tokens: Mapping[int, Sequence[str]],
    terms: TermMatcher | None = None,
) -> list[Peak]:
    """The peak word of each example context (``collect.Example``: text_id, kind, activations)
    whose tokens are known; kind 0 is a top-activating context. With ``terms``, each peak
    also names the concepts whose terms hold the peak word or a word near it that the
    feature marks as strongly (``MARKED``)."""
    out = []
    for e in examples:
        toks = tokens.get(e.text_id)
        if toks is None or not len(e.activations):
            continue
        lo, hi = word_span(toks, int(np.argmax(e.activations)))
        found = None if terms is None else _terms_near_peak(toks, e.activations, (lo, hi), terms)
        out.append(Peak("".join(toks[lo:hi]), e.text_id, e.kind == 0, found))
    return out


_CLASS_PLURAL = {
    FUNCTION: "function words",
    PUNCTUATION: "punctuation",
    DIGIT: "digits",
    FORMAT: "format tokens",
}


def contrast_firing_rate(
    counts: ConceptTokenCounts, concept: str, contrast: Contrast = "rest"
) -> np.ndarray:
    """[d_sae] share of the tokens of ``concept``'s contrast texts each feature fires on, from
    ``collect.ConceptTokenCounts`` (whose concepts must include BENIGN for "benign")."""
    _require_contrast(contrast)
    if contrast == "benign":
        b = counts.concepts.index(BENIGN)
        return counts.fires[b] / max(counts.tokens[b], 1)
    c = counts.concepts.index(concept)
    return (counts.fires_all - counts.fires[c]) / max(counts.tokens_all - counts.tokens[c], 1)


def token_rejection(
    contrast_rate: float,
    peaks: Sequence[Peak],
    config: TriageConfig | None = None,
    mean_rate: float = 0.0,
) -> str | None:
    """Why a text-level candidate is still not a concept feature, judged by *what* it fires
    on; None when it passes.

    Text-level triage asks where a feature fires; a feature can fire in concept texts on
    tokens that carry no concept: " like" in role-play prompts, digits of years in
    dictionary glosses. A reader (bench/reference/RUBRIC.md) labels those by the marked
    tokens, so triage reads them too: how densely it fires outside the concept
    (``contrast_rate``, see ``contrast_firing_rate``, against ``max_density`` times the
    SAE's ``mean_rate``; 0 skips the test), the class of the words its top contexts peak on,
    and whether those words are a safety concept's terms (for peaks whose ``terms`` were
    looked up).
    """
    config = config or TriageConfig()
    if mean_rate > 0 and contrast_rate > config.max_density * mean_rate:
        return (
            f"{DENSE}: fires on {contrast_rate:.1%} of the tokens outside its concept's texts, "
            f"{contrast_rate / mean_rate:.0f}x the SAE's mean feature rate of {mean_rate:.2%} "
            f"(max {config.max_density:g}x)"
        )
    top = [p.word for p in peaks if p.top]
    non_content = [(w, c) for w in top if (c := token_class(w)) in NON_CONTENT]
    if top and len(non_content) > config.max_non_content * len(top):
        kind = Counter(c for _, c in non_content).most_common(1)[0][0]
        word, n = Counter(w for w, _ in non_content).most_common(1)[0]
        return (
            f"{kind}: {len(non_content)}/{len(top)} top contexts peak on non-content tokens, "
            f"mostly {_CLASS_PLURAL[kind]} ({word!r} {n}/{len(top)})"
        )
    looked_up = [p for p in peaks if p.top and p.terms is not None]
    with_term = sum(bool(p.terms) for p in looked_up)
    if looked_up and with_term < config.min_term_share * len(looked_up):
        word, n = Counter(p.word for p in looked_up).most_common(1)[0]
        return (
            f"{NO_TERM}: {with_term}/{len(looked_up)} top contexts peak on a safety keyword "
            f"(needs {config.min_term_share:.0%}); mostly {word!r} {n}/{len(looked_up)}"
        )
    return None
