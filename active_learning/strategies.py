"""Query strategies over arrays (modAL + scikit-learn), shared by the workspace API and the label
efficiency benchmark. Inputs are standardised feature rows, so distances mean the same in every
column and modAL's ranked batch sees comparable scales.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

import active_learning.shims  # noqa: F401 - modAL needs its shims before use
from active_learning.learner import STRATEGIES, Strategy


class Picked(NamedTuple):
    """Pool row indices, best first, and the score that ranked each."""

    rows: np.ndarray
    scores: np.ndarray


def can_fit(y: np.ndarray, min_labels: int) -> bool:
    """A classifier needs at least two classes; below min_labels its guesses are noise."""
    return len(y) >= min_labels and len(np.unique(y)) >= 2


def make_estimator(C: float, seed: int):
    """Multinomial logistic regression with balanced class weights: rare safety concepts count
    as much as the many benign features, and predict_proba is cheap on a million rows."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)


def fit_learner(X: np.ndarray, y: np.ndarray, C: float, seed: int):
    """A modAL ActiveLearner trained on the labeled rows."""
    from modAL import ActiveLearner

    return ActiveLearner(estimator=make_estimator(C, seed), X_training=X, y_training=y)


def fit_committee(X: np.ndarray, y: np.ndarray, C: float, seed: int, size: int):
    """A modAL Committee of learners on bootstrap resamples (each keeps one row of every class,
    so no member is blind to a class the others know)."""
    from modAL import ActiveLearner, Committee

    rng = np.random.default_rng(seed)
    keep = np.array([np.flatnonzero(y == c)[0] for c in np.unique(y)])
    members = []
    for i in range(size):
        rows = np.concatenate([keep, rng.integers(0, len(y), len(y) - len(keep))])
        members.append(
            ActiveLearner(
                estimator=make_estimator(C, seed + i), X_training=X[rows], y_training=y[rows]
            )
        )
    return Committee(learner_list=members)


def diverse_pick(
    X: np.ndarray,
    score: np.ndarray,
    n: int,
    X_labeled: np.ndarray | None = None,
    candidate_factor: int = 10,
) -> Picked:
    """Greedy batch: among the top candidate_factor*n rows by score, repeatedly take the row
    with the best score x distance-to-what-is-already-chosen-or-labeled, so a batch does not
    spend ten labels on ten copies of the same feature."""
    n = min(n, len(score))
    if n <= 0:
        return Picked(np.zeros(0, dtype=np.int64), np.zeros(0))
    m = min(len(score), max(n * candidate_factor, n))
    cand = np.argpartition(-score, m - 1)[:m] if m < len(score) else np.arange(len(score))
    Xc, sc = X[cand], score[cand]
    dist = np.full(m, np.inf)
    if X_labeled is not None and len(X_labeled):
        for start in range(0, len(X_labeled), 256):
            block = X_labeled[start : start + 256]
            d = np.sqrt(((Xc[:, None, :] - block[None, :, :]) ** 2).sum(-1)).min(axis=1)
            dist = np.minimum(dist, d)
    scale = np.median(np.sqrt(((Xc - Xc.mean(axis=0)) ** 2).sum(-1))) + 1e-9
    chosen: list[int] = []
    for _ in range(n):
        spread = 1.0 - np.exp(-dist / scale)
        gain = (sc - sc.min() + 1e-6) * np.where(np.isinf(dist), 1.0, spread)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        dist = np.minimum(dist, np.sqrt(((Xc - Xc[best]) ** 2).sum(-1)))
    return Picked(cand[chosen], sc[chosen])


def _ranked(idx: np.ndarray, scores: np.ndarray) -> Picked:
    order = np.argsort(-scores, kind="stable")
    return Picked(np.asarray(idx)[order], np.asarray(scores)[order])


def select(
    strategy: Strategy,
    X_pool: np.ndarray,
    value: np.ndarray,
    n: int,
    *,
    X_labeled: np.ndarray,
    y_labeled: np.ndarray,
    C: float = 1.0,
    seed: int = 0,
    min_labels: int = 4,
    committee_size: int = 5,
    candidate_factor: int = 10,
) -> Picked:
    """The next n pool rows to label. Cold start (too few labels or a single class): random for
    "random", else a value-weighted diverse batch, which finds the rare safety concepts early."""
    from modAL.batch import uncertainty_batch_sampling
    from modAL.disagreement import max_disagreement_sampling
    from modAL.uncertainty import (
        classifier_margin,
        entropy_sampling,
        margin_sampling,
        uncertainty_sampling,
    )

    n = min(n, len(X_pool))
    rng = np.random.default_rng(seed)
    if n <= 0:
        return Picked(np.zeros(0, dtype=np.int64), np.zeros(0))
    if strategy == "random":
        return Picked(rng.choice(len(X_pool), size=n, replace=False), np.zeros(n))
    if not can_fit(y_labeled, min_labels):
        return diverse_pick(X_pool, value, n, X_labeled, candidate_factor)
    if strategy == "committee":
        committee = fit_committee(X_labeled, y_labeled, C, seed, committee_size)
        return _ranked(*max_disagreement_sampling(committee, X_pool, n_instances=n))
    learner = fit_learner(X_labeled, y_labeled, C, seed)
    if strategy == "uncertainty":
        return _ranked(*uncertainty_sampling(learner, X_pool, n_instances=n))
    if strategy == "margin":
        idx, margin = margin_sampling(learner, X_pool, n_instances=n)
        return _ranked(idx, -margin)
    if strategy == "entropy":
        return _ranked(*entropy_sampling(learner, X_pool, n_instances=n))
    if strategy == "diverse":
        # modAL's ranked batch is quadratic in the pool: rank only the most uncertain rows.
        top = min(len(X_pool), n * candidate_factor)
        uncertain = uncertainty_sampling(learner, X_pool, n_instances=top)[0]
        rows, scores = uncertainty_batch_sampling(learner, X_pool[uncertain], n_instances=n)
        return Picked(uncertain[rows], scores)
    if strategy == "value":
        doubt = 1.0 - classifier_margin(learner, X_pool)
        return diverse_pick(X_pool, doubt * (0.25 + value), n, X_labeled, candidate_factor)
    raise ValueError(f"unknown strategy '{strategy}' (one of {', '.join(STRATEGIES)})")
