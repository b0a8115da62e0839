"""Scorers of explanations on held-out contexts: detection, fuzzing, simulation, embedding,
each a `Scorer` class in the registry (importing this package registers them)."""

from safesail.explainer.scorers.base import (
    Scorer,
    ScoreResult,
    ScoringRecord,
    get_scorer,
    register_scorer,
    scorer_names,
)
from safesail.explainer.scorers.scoring import (
    Detection,
    Embedding,
    Fuzzing,
    HeldOut,
    Simulation,
    balanced_accuracy,
    embedding,
    score_explanation,
    text_similarity,
)

__all__ = [
    "Detection",
    "Embedding",
    "Fuzzing",
    "HeldOut",
    "ScoreResult",
    "Scorer",
    "ScoringRecord",
    "Simulation",
    "balanced_accuracy",
    "embedding",
    "get_scorer",
    "register_scorer",
    "score_explanation",
    "scorer_names",
    "text_similarity",
]
