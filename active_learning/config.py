"""The active learner's settings, in one validated dataclass: read by the learner, the
out-of-fold calibration, `safesail learn`'s flags and the label efficiency benchmark, without
importing any of them."""

from __future__ import annotations

from dataclasses import dataclass

from active_learning.strategies import strategy_names


@dataclass(frozen=True)
class ALConfig:
    """How the concept model fits and which strategy picks the next batch."""

    strategy: str = "value"
    """uncertainty | margin | entropy | committee (max KL disagreement) | diverse (modAL ranked
    batch over the most uncertain) | value (margin uncertainty x safety value, diverse batch:
    the default, fixed before bench/label_efficiency.py ran) | random."""
    seed: int = 0
    """Seeds the model, committee bootstraps, cross-validation folds and random sampling."""
    C: float = 0.3
    """Inverse L2 regularisation of the logistic regression."""
    tag_columns: bool = False
    """Also learn from the corpus-tag and triage columns (columns.TAG_PREFIX). Off by default:
    a reader labels what the marked tokens mean, and tag statistics fire on co-occurrence."""
    min_labels: int = 4
    """Fewer human labels than this (or a single class): cold start, a value-weighted diverse
    batch instead of model uncertainty."""
    committee_size: int = 5
    """Learners in the committee strategy."""
    candidate_factor: int = 10
    """Diverse batches re-rank the top candidate_factor x n features by score."""
    cv_folds: int = 5
    """At most this many folds for the out-of-fold predictions and their calibration."""

    def __post_init__(self) -> None:
        if self.strategy not in strategy_names():
            raise ValueError(
                f"strategy must be one of {', '.join(strategy_names())}, got '{self.strategy}'"
            )
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.min_labels < 2 or self.committee_size < 2 or self.cv_folds < 2:
            raise ValueError("min_labels, committee_size and cv_folds must be >= 2")
        if self.candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {self.candidate_factor}")
