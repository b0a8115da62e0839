"""Query strategies over arrays (modAL + scikit-learn), shared by the workspace learner and the
label efficiency benchmark. Inputs are standardised feature rows, so distances mean the same in
every column and modAL's ranked batch sees comparable scales.

Strategies are a registry (SAELens' and delphi's idiom): one class per strategy with a `name`
and a `version`, added with `register_strategy`, so a new strategy is one class and the config,
the CLI choices and the benchmark see it without a list to keep in step. modAL (and its shims)
is imported only when a strategy runs: building the CLI must not load scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from safesail.registry import Registry


class Picked(NamedTuple):
    """Pool row indices, best first, and the score that ranked each."""

    rows: np.ndarray
    scores: np.ndarray


def _empty() -> Picked:
    return Picked(np.zeros(0, dtype=np.int64), np.zeros(0))


def can_fit(y: np.ndarray, min_labels: int) -> bool:
    """A classifier needs at least two classes; below min_labels its guesses are noise."""
    return len(y) >= min_labels and len(np.unique(y)) >= 2


def make_estimator(C: float, seed: int) -> Any:
    """Multinomial logistic regression with balanced class weights: rare safety concepts count
    as much as the many benign features, and predict_proba is cheap on a million rows."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)


def fit_learner(X: np.ndarray, y: np.ndarray, C: float, seed: int) -> Any:
    """A modAL ActiveLearner trained on the labeled rows."""
    from modAL import ActiveLearner

    import active_learning.shims  # noqa: F401 - modAL needs its shims before use

    return ActiveLearner(estimator=make_estimator(C, seed), X_training=X, y_training=y)


def fit_committee(X: np.ndarray, y: np.ndarray, C: float, seed: int, size: int) -> Any:
    """A modAL Committee of learners on bootstrap resamples (each keeps one row of every class,
    so no member is blind to a class the others know)."""
    from modAL import ActiveLearner, Committee

    import active_learning.shims  # noqa: F401 - modAL needs its shims before use

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
        return _empty()
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


@dataclass(frozen=True)
class Batch:
    """One query: the pool to pick n rows from, the labels so far and the knobs."""

    X_pool: np.ndarray
    value: np.ndarray
    n: int
    X_labeled: np.ndarray
    y_labeled: np.ndarray
    C: float
    seed: int
    committee_size: int
    candidate_factor: int

    def learner(self) -> Any:
        return fit_learner(self.X_labeled, self.y_labeled, self.C, self.seed)


class Strategy:
    """A query strategy: the next n pool rows to label, best first. Below `min_labels` (or with
    a single class) there is no model to ask, so `cold_start` answers: a value-weighted diverse
    batch, which finds the rare safety concepts early."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    """Rises when the strategy picks differently for the same input."""

    def __call__(
        self,
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
        n = min(n, len(X_pool))
        if n <= 0:
            return _empty()
        batch = Batch(
            X_pool, value, n, X_labeled, y_labeled, C, seed, committee_size, candidate_factor
        )
        if not can_fit(y_labeled, min_labels):
            return self.cold_start(batch)
        return self.rank(batch)

    def cold_start(self, b: Batch) -> Picked:
        return diverse_pick(b.X_pool, b.value, b.n, b.X_labeled, b.candidate_factor)

    def rank(self, b: Batch) -> Picked:
        raise NotImplementedError


STRATEGIES: Registry[type[Strategy]] = Registry("query strategy")
register_strategy = STRATEGIES.register
strategy_names = STRATEGIES.names


def get_strategy(name: str) -> Strategy:
    """An instance of the strategy registered as `name` (unknown: a one-line error)."""
    return STRATEGIES.get(name)()


@register_strategy
class Uncertainty(Strategy):
    """Least confident: the lowest top-class probability."""

    name = "uncertainty"

    def rank(self, b: Batch) -> Picked:
        from modAL.uncertainty import uncertainty_sampling

        return _ranked(*uncertainty_sampling(b.learner(), b.X_pool, n_instances=b.n))


@register_strategy
class Margin(Strategy):
    """The smallest gap between the two likeliest classes."""

    name = "margin"

    def rank(self, b: Batch) -> Picked:
        from modAL.uncertainty import margin_sampling

        idx, margin = margin_sampling(b.learner(), b.X_pool, n_instances=b.n)
        return _ranked(idx, -margin)


@register_strategy
class Entropy(Strategy):
    """The highest entropy of the predicted class distribution."""

    name = "entropy"

    def rank(self, b: Batch) -> Picked:
        from modAL.uncertainty import entropy_sampling

        return _ranked(*entropy_sampling(b.learner(), b.X_pool, n_instances=b.n))


@register_strategy
class CommitteeDisagreement(Strategy):
    """Max KL disagreement of a bootstrap committee."""

    name = "committee"

    def rank(self, b: Batch) -> Picked:
        from modAL.disagreement import max_disagreement_sampling

        committee = fit_committee(b.X_labeled, b.y_labeled, b.C, b.seed, b.committee_size)
        return _ranked(*max_disagreement_sampling(committee, b.X_pool, n_instances=b.n))


@register_strategy
class Diverse(Strategy):
    """modAL's ranked batch over the most uncertain rows (best in bench/label_efficiency.py)."""

    name = "diverse"

    def rank(self, b: Batch) -> Picked:
        from modAL.batch import uncertainty_batch_sampling
        from modAL.uncertainty import uncertainty_sampling

        learner = b.learner()
        # modAL's ranked batch is quadratic in the pool: rank only the most uncertain rows.
        top = min(len(b.X_pool), b.n * b.candidate_factor)
        uncertain = uncertainty_sampling(learner, b.X_pool, n_instances=top)[0]
        rows, scores = uncertainty_batch_sampling(learner, b.X_pool[uncertain], n_instances=b.n)
        return Picked(uncertain[rows], scores)


@register_strategy
class Value(Strategy):
    """Margin uncertainty x safety value, as a diverse batch."""

    name = "value"

    def rank(self, b: Batch) -> Picked:
        from modAL.uncertainty import classifier_margin

        doubt = 1.0 - classifier_margin(b.learner(), b.X_pool)
        return diverse_pick(
            b.X_pool, doubt * (0.25 + b.value), b.n, b.X_labeled, b.candidate_factor
        )


@register_strategy
class Random(Strategy):
    """Uniform sampling, also at a cold start: the benchmark's baseline."""

    name = "random"

    def rank(self, b: Batch) -> Picked:
        rng = np.random.default_rng(b.seed)
        return Picked(rng.choice(len(b.X_pool), size=b.n, replace=False), np.zeros(b.n))

    cold_start = rank


def select(
    strategy: str,
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
    """The next n pool rows to label by the strategy registered as `strategy`."""
    return get_strategy(strategy)(
        X_pool,
        value,
        n,
        X_labeled=X_labeled,
        y_labeled=y_labeled,
        C=C,
        seed=seed,
        min_labels=min_labels,
        committee_size=committee_size,
        candidate_factor=candidate_factor,
    )
