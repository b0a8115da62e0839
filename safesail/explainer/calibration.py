"""Calibration: P(an automatic explanation agrees with the experts), fitted on gold-labeled
features from the explainer's signals, and the acceptance threshold that reaches a target
agreement on held-out folds.

The threshold is chosen on out-of-fold probabilities and must reach the target on the Wilson
lower bound of the accepted features' agreement, not just on its point estimate: with a few
dozen gold labels the point estimate alone over-promises. New features are routed by the same
cross-fitted models (the mean of the fold models), never by a refit on all gold labels whose
probability scale differs from the one the threshold was chosen on. A constant model (gold
answers that all agree or all disagree) has no signal to separate good from bad explanations,
so it accepts nothing.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from safesail.db.contracts import ReliabilityBin
from safesail.errors import SafesailError
from safesail.stats import wilson_interval

SIGNALS = (
    "confidence",
    "detection",
    "fuzzing",
    "simulation",
    "intruder",
    "embedding",
    "learner_probability",
    "learner_agrees",
    "triage_agrees",
    "triage_precision",
    "neighbours_agree",
    "says_safety",
    "evidence_agrees",
    "evidence_share",
)
"""Inputs of the calibration model, in column order."""

NEUTRAL = {
    "confidence": 0.5,
    "detection": 0.5,
    "fuzzing": 0.5,
    "simulation": 0.0,
    "intruder": 0.25,  # chance at the default 4 texts per question
    "embedding": 0.5,
    "learner_probability": 0.5,
    "learner_agrees": 0.5,
    "triage_agrees": 0.5,
    "triage_precision": 0.0,
    "neighbours_agree": 0.5,
    "says_safety": 0.5,
    "evidence_agrees": 0.5,
    "evidence_share": 0.0,
}
"""Value of a missing signal (scorer failed or not run, no learner): its uninformative level."""


def signal_matrix(rows: list[dict[str, float | None]]) -> np.ndarray:
    return np.array(
        [[NEUTRAL[s] if r.get(s) is None else float(r[s]) for s in SIGNALS] for r in rows],
        dtype=float,
    ).reshape(len(rows), len(SIGNALS))


def wilson_lower(agree: int, n: int, z: float) -> float:
    """Lower end of the Wilson score interval of a proportion (0 for n = 0)."""
    return wilson_interval(agree, n, z)[0]


class Threshold(NamedTuple):
    """The acceptance threshold and what it achieves on the held-out probabilities."""

    threshold: float
    """Accept when P(agree) >= this; inf: accept nothing (the target is out of reach)."""
    agreement: float | None
    """Agreement of the accepted held-out features (None when nothing is accepted)."""
    coverage: float
    """Share of the held-out features accepted."""


def choose_threshold(p: np.ndarray, agree: np.ndarray, target: float, z: float) -> Threshold:
    """The threshold accepting the most features whose agreement still reaches the target
    (on its Wilson lower bound)."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], agree[order].astype(int)
    best = Threshold(math.inf, None, 0.0)
    hits = np.cumsum(ys)
    for i in range(len(ps)):
        if i + 1 < len(ps) and ps[i + 1] == ps[i]:
            continue  # ties are accepted together
        n = i + 1
        if wilson_lower(int(hits[i]), n, z) >= target and n / len(ps) > best.coverage:
            best = Threshold(float(ps[i]), float(hits[i] / n), n / len(ps))
    return best


class Calibration(NamedTuple):
    """A fitted calibration: predict P(agree) and the threshold to accept at."""

    model: Any
    """The fold models (sklearn pipelines) whose mean routes new features, or a float when
    gold labels all agree or all disagree."""
    threshold: Threshold
    n_gold: int
    oof: np.ndarray
    """Out-of-fold P(agree) of the gold features."""
    agree: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        if isinstance(self.model, float):
            return np.full(len(x), self.model)
        return np.mean([m.predict_proba(x)[:, 1] for m in self.model], axis=0)

    def reliability(self, bins: int = 5) -> list[ReliabilityBin]:
        """Held-out predicted probability vs. observed agreement, per probability bin."""
        edges = np.linspace(0, 1, bins + 1)
        out = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            inside = (self.oof >= lo) & ((self.oof < hi) | (hi == 1.0))
            if inside.any():
                out.append(
                    ReliabilityBin(
                        lo=round(float(lo), 2),
                        hi=round(float(hi), 2),
                        n=int(inside.sum()),
                        mean_probability=round(float(self.oof[inside].mean()), 4),
                        agreement=round(float(self.agree[inside].mean()), 4),
                    )
                )
        return out


def _pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def fit_calibration(
    x: np.ndarray,
    agree: np.ndarray,
    *,
    target: float,
    min_gold: int,
    folds: int = 5,
    z: float = 1.0,
    seed: int = 0,
) -> Calibration:
    """Fit on gold features (x: SIGNALS columns, agree: 0/1); refuses below min_gold."""
    from sklearn.model_selection import StratifiedKFold

    n = len(agree)
    if n < min_gold:
        raise SafesailError(
            f"calibration needs at least {min_gold} explained gold-labeled features, has {n}: "
            f"label {min_gold - n} more features (until then nothing is auto-accepted)"
        )
    agree = np.asarray(agree, dtype=int)
    minority = int(min(agree.sum(), n - agree.sum()))
    if minority < 2:  # (almost) one class: nothing separates good explanations from bad
        oof = np.full(n, agree.mean())
        return Calibration(float(agree.mean()), Threshold(math.inf, None, 0.0), n, oof, agree)
    oof = np.zeros(n)
    models = []
    splits = StratifiedKFold(n_splits=min(folds, minority), shuffle=True, random_state=seed)
    for train, test in splits.split(x, agree):
        models.append(_pipeline().fit(x[train], agree[train]))
        oof[test] = models[-1].predict_proba(x[test])[:, 1]
    return Calibration(models, choose_threshold(oof, agree, target, z), n, oof, agree)
