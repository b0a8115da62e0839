"""Scorers of explanations on held-out contexts: detection, fuzzing, simulation, embedding."""

from safesail.explainer.scorers.scoring import (
    HeldOut,
    ScoreResult,
    balanced_accuracy,
    embedding,
    score_explanation,
    text_similarity,
)

__all__ = [
    "HeldOut",
    "ScoreResult",
    "balanced_accuracy",
    "embedding",
    "score_explanation",
    "text_similarity",
]
