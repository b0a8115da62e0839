"""Explainer prompts (ours: marked segments + nearest-gold few-shot; baseline: delphi-style):
`marks` (what is shown of a context and what in it fires), `prompts` (the chat, the evidence
line, the answer and its check)."""

from safesail.explainer.explainers.marks import (
    Shown,
    fired_tokens,
    names_what_fires,
    random_window,
    ranked_fired_tokens,
    render,
    segment,
)
from safesail.explainer.explainers.prompts import (
    Evidence,
    ExplanationAnswer,
    GoldShot,
    base_rates,
    concept_choices,
    contradiction,
    corpus_evidence,
    explain_messages,
    explanation_schema,
    named_concepts,
    nearest_shots,
)

__all__ = [
    "Evidence",
    "ExplanationAnswer",
    "contradiction",
    "GoldShot",
    "Shown",
    "base_rates",
    "concept_choices",
    "corpus_evidence",
    "explain_messages",
    "explanation_schema",
    "fired_tokens",
    "names_what_fires",
    "ranked_fired_tokens",
    "named_concepts",
    "nearest_shots",
    "random_window",
    "render",
    "segment",
]
