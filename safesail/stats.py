"""Small statistics shared by the rooms: one Wilson interval and one kappa, not copies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def wilson_bounds(
    successes: np.ndarray | float, trials: np.ndarray | float, z: float = 1.96
) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of many proportions at once, elementwise ((0, 0) where there
    are no trials). Vectorised because triage bounds the precision of every feature x concept
    pair in one pass; ``wilson_interval`` is this on one proportion, so the rooms share one
    formula. Trials may be fractional (counts recovered from firing fractions)."""
    successes, trials = np.asarray(successes, dtype=np.float64), np.asarray(trials, np.float64)
    n = np.maximum(trials, 1e-12)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    scale = 1 + z * z / n
    has_trials = trials > 0
    return (
        np.where(has_trials, (centre - spread) / scale, 0.0),
        np.where(has_trials, (centre + spread) / scale, 0.0),
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ((0, 0) for n = 0): honest at small n and at
    proportions near 0 or 1, where the normal approximation is not."""
    low, high = wilson_bounds(successes, n, z)
    return float(low), float(high)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two labelings of the same items: agreement beyond what their label
    frequencies give by chance. None where it is undefined (under two items, one class only)."""
    if len(first) < 2 or len(set(first) | set(second)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(list(first), list(second)))
