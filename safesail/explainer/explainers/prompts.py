"""Explainer prompts: marked, segment-level contexts with nearest-gold few-shot (ours), and a
delphi-style baseline (every top context whole, no few-shot) to measure what that saves.

Safe-SAIL cut interpretation cost by showing only the window around activations; the marked
tokens <<like this>> carry the signal, the rest of a long context mostly costs tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ValidationInfo, field_validator

from safesail.explainer.config import ExplainConfig
from safesail.taxonomy import normalize_name


class Shown(NamedTuple):
    """A context as the model will see it: tokens and their activations (zeros if none)."""

    tokens: list[str]
    acts: np.ndarray


class GoldShot(NamedTuple):
    """A gold-labeled feature used as a worked example."""

    feature: int
    vector: np.ndarray
    contexts: list[Shown]
    concepts: list[str]
    text: str
    confidence: float | None


class ExplanationAnswer(BaseModel):
    """The explainer's structured answer; concepts must be taxonomy label values."""

    concepts: list[str]
    explanation: str
    confidence: int

    @field_validator("concepts")
    @classmethod
    def _known(cls, value: list[str], info: ValidationInfo) -> list[str]:
        labels = (info.context or {}).get("labels")
        out = []
        for name in value:
            canonical = normalize_name(str(name))
            if labels is not None and canonical not in labels:
                raise ValueError(f"'{name}' is not a taxonomy label")
            if canonical not in out:
                out.append(canonical)
        if not out:
            raise ValueError("no concept given")
        return out[:2]

    @field_validator("explanation")
    @classmethod
    def _sentence(cls, value: str) -> str:
        text = " ".join(value.split())
        first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]  # one sentence
        text = first if len(first) >= 3 else text
        if len(text) < 3:
            raise ValueError("empty explanation")
        return text[:300]

    @field_validator("confidence")
    @classmethod
    def _scale(cls, value: int) -> int:
        if not 0 <= value <= 10:
            raise ValueError("confidence must be 0-10")
        return value


def explanation_schema(labels: list[str]) -> dict[str, Any]:
    """JSON schema the endpoint constrains its answer to (enums keep concepts on-taxonomy)."""
    return {
        "type": "object",
        "properties": {
            "concepts": {
                "type": "array",
                "items": {"type": "string", "enum": labels},
                "minItems": 1,
                "maxItems": 2,
            },
            "confidence": {"type": "integer", "enum": list(range(11))},
            "explanation": {"type": "string", "maxLength": 140},
        },
        "required": ["concepts", "confidence", "explanation"],
    }


def segment(tokens: list[str], acts: np.ndarray, config: ExplainConfig) -> Shown:
    """The window around the peak activation (the whole context if it never fires)."""
    if len(acts) == 0 or acts.max() <= 0:
        return Shown(tokens, acts)
    peak = int(acts.argmax())
    lo, hi = max(0, peak - config.window_left), min(len(tokens), peak + config.window_right + 1)
    return Shown(tokens[lo:hi], acts[lo:hi])


def random_window(tokens: list[str], width: int, rng: np.random.Generator) -> Shown:
    """A non-activating text cut to the width of a segment, so length gives nothing away."""
    start = int(rng.integers(0, max(1, len(tokens) - width + 1)))
    part = tokens[start : start + width]
    return Shown(part, np.zeros(len(part), dtype=np.float32))


def render(shown: Shown, mark_fraction: float | None, marks: np.ndarray | None = None) -> str:
    """Tokens joined back into text; marked tokens (the strongest, or `marks`) as <<token>>."""
    if marks is None:
        top = float(shown.acts.max(initial=0.0))
        marks = (
            shown.acts >= mark_fraction * top
            if mark_fraction is not None and top > 0
            else np.zeros(len(shown.tokens), dtype=bool)
        )
    parts = []
    for token, marked in zip(shown.tokens, marks, strict=True):
        if marked and token.strip():
            lead = token[: len(token) - len(token.lstrip())]
            parts.append(f"{lead}<<{token.strip()}>>")
        else:
            parts.append(token)
    return " ".join("".join(parts).split())


def _system(labels: list[str]) -> str:
    return (
        "You explain a feature of a language model from texts where it fires; the tokens "
        "where it fires most are marked <<like this>>. Reply in JSON with concepts (1-2 of: "
        f"{', '.join(labels)}), confidence (0-10) and explanation (one short sentence)."
    )


def _numbered(texts: list[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))


def explain_messages(
    contexts: list[Shown],
    labels: list[str],
    config: ExplainConfig,
    shots: list[GoldShot] = (),
) -> list[dict[str, str]]:
    """The chat for one feature. `contexts` are its explain-split top contexts, best first."""
    messages = [{"role": "system", "content": _system(labels)}]
    if config.prompting == "baseline":
        texts = [render(c, config.mark_fraction) for c in contexts]
        messages.append({"role": "user", "content": "Texts:\n" + _numbered(texts)})
        return messages
    for shot in shots:
        texts = [render(segment(*c, config), config.mark_fraction) for c in shot.contexts[:2]]
        answer = {
            "concepts": shot.concepts,
            "confidence": int(round(10 * shot.confidence)) if shot.confidence is not None else 8,
            "explanation": shot.text or f"Text about {', '.join(shot.concepts)}.",
        }
        messages.append({"role": "user", "content": "Texts:\n" + _numbered(texts)})
        messages.append({"role": "assistant", "content": json.dumps(answer)})
    texts = [render(segment(*c, config), config.mark_fraction) for c in contexts[: config.n_shown]]
    messages.append({"role": "user", "content": "Texts:\n" + _numbered(texts)})
    return messages


def nearest_shots(vector: np.ndarray, gold: list[GoldShot], k: int, exclude: int) -> list[GoldShot]:
    """The k gold features whose concept profile is closest (cosine), never the feature itself."""
    pool = [g for g in gold if g.feature != exclude]
    if not pool or k == 0:
        return []
    matrix = np.stack([g.vector for g in pool])
    sims = matrix @ vector / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector) + 1e-9)
    order = sorted(range(len(pool)), key=lambda i: (-sims[i], pool[i].feature))
    return [pool[i] for i in order[:k]]
