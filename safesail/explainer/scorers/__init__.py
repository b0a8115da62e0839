"""Scorers of explanations on held-out contexts: detection, fuzzing, simulation, intruder and
embedding, each a `Scorer` class in the registry (importing this package registers them)."""

from safesail.explainer.scorers.base import (
    Scorer,
    ScoreResult,
    ScoringRecord,
    get_scorer,
    register_scorer,
    scorer_names,
)
from safesail.explainer.scorers.embedding import Embedding, embedding, has_minilm
from safesail.explainer.scorers.intruder import Intruder
from safesail.explainer.scorers.scoring import (
    Detection,
    Fuzzing,
    HeldOut,
    Simulation,
    balanced_accuracy,
    score_explanation,
)

__all__ = [
    "Detection",
    "Embedding",
    "Fuzzing",
    "HeldOut",
    "Intruder",
    "ScoreResult",
    "Scorer",
    "ScoringRecord",
    "Simulation",
    "balanced_accuracy",
    "embedding",
    "get_scorer",
    "has_minilm",
    "register_scorer",
    "score_explanation",
    "scorer_names",
]
