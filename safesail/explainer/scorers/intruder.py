"""The intruder scorer (delphi's IntruderScorer): can the judge spot the one non-activating text
among activating ones? No explanation is shown, so it measures the *feature* (do its activating
texts share something the others lack, as a reader would see it), not the explanation's wording.
Paulo & Belrose (arXiv 2507.08473) found intrusion detection the automatic score closest to
human judgement of a latent, which makes it a calibration signal: an explanation of a feature
nobody can read should rarely be trusted.

Each non-activating held-out text is the intruder of one question, among `intruder_shown - 1`
activating texts drawn from the held-out ones; the activating tokens are marked <<like this>>
and the intruder gets as many marks on random tokens (delphi's default), so marking alone
gives nothing away. Every question of a feature goes in ONE call. The value is the share of
questions answered right; chance is 1 / texts per question (in the details).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from safesail.explainer.explainers.marks import Shown, render
from safesail.explainer.scorers.base import Scorer, ScoreResult, ScoringRecord, register_scorer
from safesail.explainer.scorers.scoring import Ratings, ratings_schema

INSTRUCTION = (
    "You are shown numbered sets of texts. In each set every text but one makes the same "
    "language-model feature fire, on the tokens marked <<like this>>; the one other text, the "
    "intruder, does not (its marks are on random tokens). Find what the activating texts share "
    "and, for each set, answer the number of the intruder within that set. Reply JSON "
    '{"answers": [one number per set]}.'
)


class Question(NamedTuple):
    """One set of texts and where the intruder sits in it."""

    texts: list[str]
    intruder: int


def _marks(shown: Shown, mark_fraction: float) -> np.ndarray:
    top = float(shown.acts.max(initial=0.0))
    return shown.acts >= mark_fraction * top if top > 0 else np.zeros(len(shown.tokens), bool)


def _random_marks(shown: Shown, n: int, rng: np.random.Generator) -> np.ndarray:
    """n marks on random non-blank tokens (render does not mark blank ones)."""
    marks = np.zeros(len(shown.tokens), dtype=bool)
    words = np.flatnonzero([bool(t.strip()) for t in shown.tokens])
    if len(words) and n > 0:
        marks[rng.choice(words, size=min(n, len(words)), replace=False)] = True
    return marks


def questions(
    pos: list[Shown],
    neg: list[Shown],
    shown: int,
    mark_fraction: float,
    rng: np.random.Generator,
) -> list[Question]:
    """One question per non-activating text: it plus `shown - 1` activating texts (fewer when
    there are fewer), shuffled. Empty when either side is missing."""
    n_active = min(shown - 1, len(pos))
    if not n_active or not neg:
        return []
    out = []
    for intruder in neg:
        chosen = [pos[i] for i in rng.choice(len(pos), size=n_active, replace=False)]
        marks = [_marks(s, mark_fraction) for s in chosen]
        texts = [render(s, None, m) for s, m in zip(chosen, marks, strict=True)]
        n_marks = max(1, round(float(np.mean([m.sum() for m in marks]))))
        at = int(rng.integers(0, n_active + 1))
        texts.insert(at, render(intruder, None, _random_marks(intruder, n_marks, rng)))
        out.append(Question(texts, at))
    return out


def prompt(asked: list[Question]) -> str:
    """The sets as the judge reads them: "Set 1:" then its texts numbered from 0."""
    return "\n\n".join(
        f"Set {q}:\n" + "\n".join(f"  {i}. {t}" for i, t in enumerate(question.texts))
        for q, question in enumerate(asked, 1)
    )


@register_scorer
class Intruder(Scorer):
    """Share of intruder questions answered right, no explanation shown (chance 1/texts)."""

    name = "intruder"
    version = "v1"

    def __call__(self, record: ScoringRecord) -> ScoreResult:
        asked = questions(
            record.positives,
            record.negatives,
            self.config.intruder_shown,
            self.config.mark_fraction,
            record.rng,
        )
        if not asked:
            return ScoreResult(
                self.name, None, {"reason": "needs activating and non-activating texts"}
            )
        assert self.client is not None  # Scorer.__init__ refuses an LLM scorer without one
        top = len(asked[0].texts) - 1
        reply = self.client.structured(
            [
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": prompt(asked)},
            ],
            Ratings,
            step=self.name,
            max_tokens=4 * len(asked) + 16,
            schema=ratings_schema(len(asked), top),
            context={"n": len(asked), "max": top},
            sae_id=record.sae_id,
            feature=record.feature,
        )
        if reply.value is None:
            return ScoreResult(self.name, None, {"reason": reply.reason})
        truth = [q.intruder for q in asked]
        guess = list(reply.value.answers)
        right = [t == g for t, g in zip(truth, guess, strict=True)]
        return ScoreResult(
            self.name,
            float(np.mean(right)),
            {"truth": truth, "guess": guess, "chance": 1 / (top + 1)},
        )
