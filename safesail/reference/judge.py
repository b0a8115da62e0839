"""One part's answers judged against the readers, with what chance gives beside it.

A label set that is mostly `benign` makes a high agreement easy, so every figure comes with
Cohen's kappa, the majority-class baseline (always answering the readers' most common label)
and the same agreement on the features the readers call a safety concept. The agreement rule is
the one the readers are held to between themselves: the part's primary answer is one of the
reader's labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from safesail.reference.labels import ReferenceLabel, agrees
from safesail.stats import cohen_kappa, wilson_interval

MIN_PER_CONCEPT = 5
"""Per-concept agreement is shown only where the readers gave the concept this often."""


@dataclass(frozen=True)
class Judged:
    """A part's agreement with the readers on some reference features."""

    n: int
    agree: int
    kappa: float | None
    majority_label: str
    majority_agree: int
    safety_n: int
    safety_agree: int
    per_concept: dict[str, tuple[int, int]]
    """Reader's primary safety concept -> (agree, n), where n >= MIN_PER_CONCEPT."""

    def figures(self, name: str) -> dict[str, object]:
        """name=value lines for `reference check`."""

        def rate(agree: int, n: int) -> str:
            if not n:
                return "none"
            lo, hi = wilson_interval(agree, n)
            return f"{agree / n:.3f} [{lo:.2f}, {hi:.2f}] of {n}"

        return {
            f"{name}_agreement": rate(self.agree, self.n),
            f"{name}_kappa": "undefined" if self.kappa is None else round(self.kappa, 3),
            f"{name}_majority_baseline": (
                f"{self.majority_agree / self.n:.3f} ({self.majority_label})" if self.n else "none"
            ),
            f"{name}_safety_agreement": rate(self.safety_agree, self.safety_n),
            f"{name}_per_concept": " ".join(
                f"{c}:{a}/{n}" for c, (a, n) in sorted(self.per_concept.items())
            )
            or "none with n>=5",
        }


def judge(answers: Mapping[int, Sequence[str]], reference: Sequence[ReferenceLabel]) -> Judged:
    """The part's primary answer against each reference feature it answered."""
    answered = [r for r in reference if answers.get(r.feature)]
    ok = {r.feature: agrees(answers[r.feature], r) for r in answered}
    # kappa on the primary labels, the reader's label taken as the part's where they agree
    truth = [answers[r.feature][0] if ok[r.feature] else r.labels[0] for r in answered]
    given = [answers[r.feature][0] for r in answered]
    counts = Counter(r.labels[0] for r in reference)
    majority = counts.most_common(1)[0][0] if counts else "none"
    safety = [r for r in answered if r.safety]
    per: dict[str, list[int]] = {}
    for r in safety:
        tally = per.setdefault(r.labels[0], [0, 0])
        tally[0] += ok[r.feature]
        tally[1] += 1
    return Judged(
        n=len(answered),
        agree=sum(ok.values()),
        kappa=cohen_kappa(truth, given),
        majority_label=majority,
        majority_agree=sum(majority in r.labels for r in answered),
        safety_n=len(safety),
        safety_agree=sum(ok[r.feature] for r in safety),
        per_concept={c: (a, n) for c, (a, n) in per.items() if n >= MIN_PER_CONCEPT},
    )
