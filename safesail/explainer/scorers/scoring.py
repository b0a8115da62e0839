"""Scores of an explanation on contexts the explainer never saw (delphi / OpenAI style).

- detection: given the explanation, which texts make the feature fire (balanced accuracy);
- fuzzing: which texts have the activating tokens marked, versus random tokens (balanced acc.);
- simulation: the LLM rates each text 0-10, correlated with the real max activation (the cheap
  per-segment variant of simulating activations);
(the embedding and intruder scorers have their own modules.)

Each LLM scorer asks about every text of a feature in ONE call, so scoring costs one short call
per LLM scorer and feature. Each is a registered `Scorer` class (scorers/base.py); importing
this module registers them, in this order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ValidationInfo, field_validator

from safesail.explainer.explainers.marks import Shown, random_window, render, segment
from safesail.explainer.scorers.base import (
    Scorer,
    ScoreResult,
    ScoringRecord,
    get_scorer,
    register_scorer,
)

if TYPE_CHECKING:  # the settings import this module (through the registry) to validate
    from safesail.explainer.clients import LlmClient
    from safesail.explainer.config import ExplainConfig


class Ratings(BaseModel):
    """One integer per numbered text, within the asked range."""

    answers: list[int]

    @field_validator("answers")
    @classmethod
    def _shape(cls, value: list[int], info: ValidationInfo) -> list[int]:
        ctx = info.context or {}
        if "n" in ctx and len(value) != ctx["n"]:
            raise ValueError(f"expected {ctx['n']} answers, got {len(value)}")
        if any(not 0 <= v <= ctx.get("max", 10) for v in value):
            raise ValueError(f"answers must be within 0-{ctx.get('max', 10)}")
        return value


def ratings_schema(n: int, top: int) -> dict[str, Any]:
    """The JSON schema of `n` integer ratings 0..`top`: what a scorer asks the endpoint to
    answer in, so a malformed answer is refused by the server, not parsed by us."""
    items = {"type": "integer", "enum": list(range(top + 1))}
    return {
        "type": "object",
        "properties": {"answers": {"type": "array", "items": items, "minItems": n, "maxItems": n}},
        "required": ["answers"],
    }


def balanced_accuracy(truth: list[bool], guess: list[bool]) -> float:
    t, g = np.asarray(truth, bool), np.asarray(guess, bool)
    rates = [float((g[t == c] == c).mean()) for c in (True, False) if (t == c).any()]
    return float(np.mean(rates))


class HeldOut(NamedTuple):
    """A feature's scoring material: activating held-out contexts and non-activating texts."""

    positives: list[Shown]
    negatives: list[Shown]


def shown_for_scoring(held: HeldOut, config: ExplainConfig, rng: np.random.Generator):
    """Segments (ours) or whole contexts (baseline) for positives and negatives alike."""
    if config.prompting == "baseline":
        return held.positives, held.negatives
    width = config.window_left + config.window_right + 1
    pos = [segment(*s, config) for s in held.positives]
    return pos, [random_window(s.tokens, width, rng) for s in held.negatives]


def _ask(
    client: LlmClient | None,
    step: str,
    instruction: str,
    texts: list[str],
    top: int,
    record: ScoringRecord,
):
    """One call asking for a rating per numbered text (every text of a feature at once)."""
    assert client is not None  # Scorer.__init__ refuses an LLM scorer without one
    numbered = "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))
    messages = [
        {"role": "system", "content": instruction},
        {"role": "user", "content": f"Texts:\n{numbered}"},
    ]
    return client.structured(
        messages,
        Ratings,
        step=step,
        max_tokens=4 * len(texts) + 16,
        schema=ratings_schema(len(texts), top),
        context={"n": len(texts), "max": top},
        sae_id=record.sae_id,
        feature=record.feature,
    )


def _shuffle(items: list[Any], rng: np.random.Generator) -> tuple[list[Any], np.ndarray]:
    order = rng.permutation(len(items))
    return [items[i] for i in order], order


def _yes_no(
    scorer: Scorer, instruction: str, items: list[tuple[str, bool]], record: ScoringRecord
) -> ScoreResult:
    """Ask the judge one yes/no answer per text; its balanced accuracy against the truth (the
    shared tail of detection and fuzzing, which differ only in what they show)."""
    reply = _ask(scorer.client, scorer.name, instruction, [t for t, _ in items], 1, record)
    if reply.value is None:
        return ScoreResult(scorer.name, None, {"reason": reply.reason})
    truth = [y for _, y in items]
    guess = [bool(a) for a in reply.value.answers]
    return ScoreResult(
        scorer.name, balanced_accuracy(truth, guess), {"truth": truth, "guess": guess}
    )


@register_scorer
class Detection(Scorer):
    """Given the explanation, which texts make the feature fire (balanced accuracy)."""

    name = "detection"
    version = "v1"

    def __call__(self, record: ScoringRecord) -> ScoreResult:
        pos, neg, rng = record.positives, record.negatives, record.rng
        items, order = _shuffle(
            [(render(s, None), True) for s in pos] + [(render(s, None), False) for s in neg], rng
        )
        instruction = (
            f'A language-model feature is explained as: "{record.explanation}". For each text '
            'answer 1 if the feature fires on it, else 0. Reply JSON {"answers": [one number per '
            "text]}."
        )
        return _yes_no(self, instruction, items, record)


@register_scorer
class Fuzzing(Scorer):
    """Which texts have the activating tokens marked, versus random tokens (balanced acc.)."""

    name = "fuzzing"
    version = "v1"

    def __call__(self, record: ScoringRecord) -> ScoreResult:
        rng = record.rng
        items = []
        for shown in record.positives:
            top = float(shown.acts.max(initial=0.0))
            right = shown.acts >= self.config.mark_fraction * top
            quiet = np.flatnonzero(~right)
            wrong = np.zeros(len(shown.tokens), dtype=bool)
            if len(quiet):
                size = min(int(right.sum()) or 1, len(quiet))
                wrong[rng.choice(quiet, size=size, replace=False)] = True
            items += [(render(shown, None, right), True), (render(shown, None, wrong), False)]
        items, _ = _shuffle(items, rng)
        instruction = (
            f'A language-model feature is explained as: "{record.explanation}". In each text some '
            "tokens are marked <<like this>>. Answer 1 if the marked tokens are where this feature "
            'fires, else 0. Reply JSON {"answers": [one number per text]}.'
        )
        return _yes_no(self, instruction, items, record)


@register_scorer
class Simulation(Scorer):
    """The LLM rates each text 0-10, correlated with the real max activation (the cheap
    per-segment variant of simulating activations)."""

    name = "simulation"
    version = "v1"

    def __call__(self, record: ScoringRecord) -> ScoreResult:
        pos, neg = record.positives, record.negatives
        peak = max((float(s.acts.max(initial=0.0)) for s in pos), default=1.0) or 1.0
        items, _ = _shuffle(
            [(render(s, None), float(s.acts.max(initial=0.0)) / peak) for s in pos + neg],
            record.rng,
        )
        instruction = (
            f'A language-model feature is explained as: "{record.explanation}". Rate from 0 to 10 '
            'how strongly it fires on each text. Reply JSON {"answers": [one rating per text]}.'
        )
        reply = _ask(self.client, self.name, instruction, [t for t, _ in items], 10, record)
        if reply.value is None:
            return ScoreResult(self.name, None, {"reason": reply.reason})
        real = np.array([a for _, a in items])
        predicted = np.array(reply.value.answers, dtype=float)
        corr = (
            float(np.corrcoef(real, predicted)[0, 1])
            if real.std() > 0 and predicted.std() > 0
            else 0.0
        )
        return ScoreResult(
            self.name, corr, {"real": real.round(3).tolist(), "predicted": predicted.tolist()}
        )


def score_explanation(
    client: LlmClient | None,
    explanation: str,
    held: HeldOut,
    config: ExplainConfig,
    sae_id: str,
    feature: int,
) -> list[ScoreResult]:
    """Every configured scorer on the feature's held-out material (seeded per feature)."""
    rng = np.random.default_rng([config.seed, feature])
    pos, neg = shown_for_scoring(held, config, rng)
    record = ScoringRecord(explanation, pos, neg, sae_id, feature, rng)
    return [get_scorer(name)(client, config)(record) for name in config.scorers]
