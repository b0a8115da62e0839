"""Explainer prompts (ours: marked segments + nearest-gold few-shot; baseline: delphi-style)."""

from safesail.explainer.explainers.prompts import (
    Evidence,
    ExplanationAnswer,
    GoldShot,
    Shown,
    base_rates,
    concept_choices,
    corpus_evidence,
    explain_messages,
    explanation_schema,
    fired_tokens,
    nearest_shots,
    random_window,
    render,
    segment,
)

__all__ = [
    "Evidence",
    "ExplanationAnswer",
    "GoldShot",
    "Shown",
    "base_rates",
    "concept_choices",
    "corpus_evidence",
    "explain_messages",
    "explanation_schema",
    "fired_tokens",
    "nearest_shots",
    "random_window",
    "render",
    "segment",
]
