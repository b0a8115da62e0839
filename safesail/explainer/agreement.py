"""When an automatic answer agrees with the experts: the rule every stage's gold answers are
judged by, and the concept model's sentence, written so that an agreeing answer is one.
"""

from __future__ import annotations

from collections.abc import Iterable

from safesail.explainer.explainers import contradiction, named_concepts, names_what_fires
from safesail.explainer.materials import Gold
from safesail.explainer.stages import is_safety
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


def agrees(
    concepts: list[str], text: str, gold: Gold, fired: Iterable[str], safety: list[str]
) -> bool:
    """The answer describes the same feature as the experts: its primary concept is one of
    theirs, and for a safety concept its sentence names what fires (a marked token) and names
    that concept, without saying it is no safety concept. `safety`: the taxonomy's safety
    concepts."""
    if not concepts or concepts[0] not in gold.concepts:
        return False
    primary = concepts[0]
    if not is_safety(primary):
        return True
    return (
        names_what_fires(text, set(fired))
        and primary in named_concepts(text, safety)
        and contradiction(concepts, text, safety) is None
    )


def draft_sentence(concepts: list[str], fired: list[str]) -> str:
    """The concept model's explanation, written without an LLM: the most frequent marked
    tokens, quoted, and the concept (the sentence an agreeing answer must be)."""
    quoted = ", ".join(f'"{t}"' for t in fired[:3]) or "its marked tokens"
    primary = concepts[0]
    if primary == BENIGN:
        return f"Fires on {quoted} in ordinary text (not safety-related)."
    if primary == UNINTERPRETABLE:
        return f"Fires on {quoted} with no clear pattern."
    return f"Fires on {quoted} in {primary.replace('_', ' ')} text."
