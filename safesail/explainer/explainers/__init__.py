"""Explainer prompts (ours: marked segments + nearest-gold few-shot; baseline: delphi-style)."""

from safesail.explainer.explainers.prompts import (
    ExplanationAnswer,
    GoldShot,
    Shown,
    explain_messages,
    explanation_schema,
    nearest_shots,
    random_window,
    render,
    segment,
)

__all__ = [
    "ExplanationAnswer",
    "GoldShot",
    "Shown",
    "explain_messages",
    "explanation_schema",
    "nearest_shots",
    "random_window",
    "render",
    "segment",
]
