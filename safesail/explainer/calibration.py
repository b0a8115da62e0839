"""Acceptance with a finite-sample guarantee: fixed-sequence testing (Learn-then-Test,
Angelopoulos et al. 2021; as used by Trust or Escalate, Jung et al. 2024) of each cascade
stage's confidence on the gold features that reach that stage.

For a stage with confidences c_i and agreements y_i (1: the answer matches the experts) on its
calibration gold, the candidate thresholds are the distinct confidences from high to low: they
depend on c alone, so they are fixed before y is looked at. For each threshold the null "the
error rate among accepted features exceeds alpha = 1 - target" is tested with the exact
binomial p-value P(Binomial(n_k, alpha) <= e_k); the sequence stops at the first p-value above
delta and the threshold is the last one rejected. Then, for features exchangeable with the gold
ones, P(agreement among accepted >= target) >= 1 - delta. The sequence starts where the
threshold already accepts ln(delta) / ln(1 - alpha) gold features (a rule on c alone): below
that even an error-free set cannot reject, and starting on the top two or three features would
stop the sequence at once.

The cascade splits delta over its stages (Bonferroni), so one guarantee holds over every
feature any stage accepts. A stage with fewer gold answers than an error-free set needs at its
share can never reject; it gets no share and the others split delta (`delta_shares`). That rule
reads only how many gold features each stage answered, never whether they agree, so the split
is fixed before any agreement is looked at and the guarantee stands. The confidences of the gold features must not have been fitted on
their own labels (out-of-fold predictions, or an answer whose prompt never showed that
feature's label); this module only tests, it fits nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import beta, binom

from safesail.db.contracts import ReliabilityBin


def min_accepted(target: float, delta: float) -> int:
    """Gold features a threshold must accept before an error-free set can reject the null:
    (1 - alpha)^n <= delta needs n >= ln(delta) / ln(1 - alpha)."""
    return math.ceil(math.log(delta) / math.log(target) - 1e-9)


def agreement_lower_bound(agree: int, n: int, delta: float) -> float:
    """One-sided exact (Clopper-Pearson) 1 - delta lower bound on an agreement rate: the bound
    a fixed-sequence acceptance reaches (>= target exactly when its p-value is <= delta)."""
    if n == 0 or agree == 0:
        return 0.0
    return float(beta.ppf(delta, agree, n - agree + 1))


class Acceptance(NamedTuple):
    """One stage's threshold and what it rests on."""

    threshold: float
    """Accept a feature whose stage confidence is >= this; inf: accept nothing."""
    target: float
    delta: float
    """This stage's share of the cascade's delta."""
    n_gold: int
    """Gold features that reached the stage (its calibration set)."""
    gold_accepted: int
    """Of them, accepted at the threshold."""
    gold_errors: int
    """Of those, disagreeing with the experts."""
    p_value: float | None
    """Exact binomial p-value at the threshold (None when nothing is accepted)."""
    bound: float | None
    """1 - delta lower bound on the agreement of what the threshold accepts (>= target when
    anything is accepted; None otherwise)."""
    needed: int
    """Gold features the first tested threshold must accept (min_accepted)."""

    def accepts(self, confidence: float | None) -> bool:
        return confidence is not None and confidence >= self.threshold


def fixed_sequence(
    confidence: np.ndarray | Sequence[float],
    agree: np.ndarray | Sequence[int],
    *,
    target: float,
    delta: float,
) -> Acceptance:
    """The threshold of fixed-sequence testing (see the module doc): the lowest candidate
    threshold reached before the first p-value above delta; inf when none is rejected."""
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(agree, dtype=int)
    alpha = 1.0 - target
    need = min_accepted(target, delta)
    none = Acceptance(math.inf, target, delta, len(c), 0, 0, None, None, need)
    if len(c) < need:
        return none
    order = np.argsort(-c, kind="stable")
    cs, ys = c[order], y[order]
    # the end of each tie group: a threshold accepts every feature at or above it
    ends = np.flatnonzero(np.r_[cs[1:] != cs[:-1], True])
    n = ends + 1
    errors = np.cumsum(1 - ys)[ends]
    start = n >= need
    n, errors, thresholds = n[start], errors[start], cs[ends][start]
    p = binom.cdf(errors, n, alpha)
    rejected = np.cumprod(p <= delta).astype(bool)  # fixed sequence: stop at the first failure
    if not rejected.any():
        return none
    k = int(np.flatnonzero(rejected)[-1])
    agree_k = int(n[k] - errors[k])
    return Acceptance(
        float(thresholds[k]),
        target,
        delta,
        len(c),
        int(n[k]),
        int(errors[k]),
        float(p[k]),
        agreement_lower_bound(agree_k, int(n[k]), delta),
        need,
    )


class GoldAnswer(NamedTuple):
    """A gold feature's answer at one stage: its confidence and whether it agrees."""

    confidence: float
    agrees: bool


def delta_shares(n_gold: Sequence[int], *, target: float, delta: float) -> list[float]:
    """Each stage's share of delta: equal among the stages whose gold answers (`n_gold`, all
    they answered) are enough for an error-free set to reject at that share, 0 for the rest.
    A stage of the embedded LLM asked on a few gold features can prove nothing; spending delta
    on it would only raise what every other stage must show."""
    live = list(range(len(n_gold)))
    while live:
        need = min_accepted(target, delta / len(live))
        enough = [i for i in live if n_gold[i] >= need]
        if enough == live:
            break
        live = enough
    return [delta / len(live) if i in live else 0.0 for i in range(len(n_gold))]


def cascade(
    stages: Sequence[Mapping[int, GoldAnswer]], *, target: float, delta: float
) -> list[Acceptance]:
    """Each stage's acceptance, in cascade order, on the gold features that reach it (those
    with an answer at the stage that no earlier stage accepted), each at its `delta_shares`
    share (a stage with none accepts nothing)."""
    shares = delta_shares([len(a) for a in stages], target=target, delta=delta)
    even = delta / max(len(stages), 1)
    taken: set[int] = set()
    out = []
    for answers, share in zip(stages, shares, strict=True):
        reach = sorted(f for f in answers if f not in taken)
        if share == 0.0:
            need = min_accepted(target, even)
            out.append(Acceptance(math.inf, target, 0.0, len(reach), 0, 0, None, None, need))
            continue
        acceptance = fixed_sequence(
            [answers[f].confidence for f in reach],
            [answers[f].agrees for f in reach],
            target=target,
            delta=share,
        )
        taken |= {f for f in reach if acceptance.accepts(answers[f].confidence)}
        out.append(acceptance)
    return out


def reliability(
    confidence: Sequence[float], agree: Sequence[int], bins: int = 5
) -> list[ReliabilityBin]:
    """A stage's confidence vs. observed agreement on its gold, per confidence bin."""
    c, y = np.asarray(confidence, dtype=float), np.asarray(agree, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (c >= lo) & ((c < hi) | (hi == 1.0))
        if inside.any():
            out.append(
                ReliabilityBin(
                    lo=round(float(lo), 2),
                    hi=round(float(hi), 2),
                    n=int(inside.sum()),
                    mean_probability=round(float(c[inside].mean()), 4),
                    agreement=round(float(y[inside].mean()), 4),
                )
            )
    return out
