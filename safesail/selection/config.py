"""The settings of SAE selection, validated when they are made, and the validators and the
definition of "contrast" that triage's settings (``safesail.triage.config``) share.

Kept apart from the computations so that the command line and the workspace can build and
check a configuration without importing the statistics (or sklearn), and so that scoring
and triage read one definition of what "contrast" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


def require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def require_fraction(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def require_contrast(contrast: object) -> None:
    if contrast not in ("rest", "benign"):
        raise ValueError(f"contrast must be 'rest' or 'benign', got {contrast!r}")


Contrast = Literal["rest", "benign"]
RankBy = Literal["pre_explanation", "score"]


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
    rank_by: RankBy = "pre_explanation"
    """What chooses the SAE: Safe-SAIL's pre-explanation index on contrastive pairs (mean
    I_CDF, as the paper chooses its configuration before explaining anything) or safesail's
    earlier composite score (specificity + probe F1)."""

    def __post_init__(self) -> None:
        if self.rank_by not in ("pre_explanation", "score"):
            raise ValueError(f"rank_by must be pre_explanation or score, got {self.rank_by!r}")
        if isinstance(self.threshold_auroc, bool) or not isinstance(
            self.threshold_auroc, int | float
        ):
            raise ValueError(f"threshold_auroc must be a number, got {self.threshold_auroc!r}")
        if not 0.5 < self.threshold_auroc <= 1.0:
            raise ValueError(
                f"threshold_auroc must be in (0.5, 1] (0.5 is chance), got {self.threshold_auroc}"
            )
        require_int("probe_features", self.probe_features, 1)
        require_int("probe_folds", self.probe_folds, 2)
        require_int("min_texts", self.min_texts, 2)
        if self.min_texts < self.probe_folds:
            raise ValueError(
                f"min_texts ({self.min_texts}) must be >= probe_folds ({self.probe_folds}) so "
                "every fold holds texts of both classes"
            )
        require_int("seed", self.seed, 0)
        require_fraction("fire_fraction", self.fire_fraction, 0.0, 1.0)
        require_contrast(self.contrast)
