"""Inter-annotator agreement (Cohen's and Fleiss' kappa per concept) and the adjudication rule
that turns one feature's annotations into its single human label."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np

from safesail.taxonomy import BENIGN, UNINTERPRETABLE

ADJUDICATION_RULE = (
    "one annotator: their answer; several who agree on the concept set: that set (mean "
    "confidence); disagreement: the most confident answer; a confidence tie: the union of the "
    "safety concepts named (erring toward flagging), or, if none names one, the earliest answer"
)
"""Stated in Meta "annotation" and in each human Explanation's details."""


class Answer(NamedTuple):
    """One valid annotation, as adjudication sees it."""

    annotator: str
    concepts: list[str]
    confidence: float
    explanation: str
    order: float  # creation time (epoch seconds): earlier answers win exact ties


class Adjudicated(NamedTuple):
    concepts: list[str]
    confidence: float
    explanation: str
    annotators: list[str]
    agreed: bool
    reason: str


def adjudicate(answers: list[Answer]) -> Adjudicated:
    """Apply ADJUDICATION_RULE to one feature's valid answers (latest per annotator)."""
    if not answers:
        raise ValueError("adjudicate needs at least one answer")
    answers = sorted(answers, key=lambda a: a.order)
    names = [a.annotator for a in answers]
    if len(answers) == 1:
        a = answers[0]
        return Adjudicated(a.concepts, a.confidence, a.explanation, names, True, "single")
    if len({frozenset(a.concepts) for a in answers}) == 1:
        mean = float(np.mean([a.confidence for a in answers]))
        first = answers[0]
        return Adjudicated(first.concepts, mean, first.explanation, names, True, "agreed")
    best = max(a.confidence for a in answers)
    top = [a for a in answers if a.confidence == best]
    if len(top) == 1:
        a = top[0]
        return Adjudicated(a.concepts, a.confidence, a.explanation, names, False, "most confident")
    safety = [
        c for a in top for c in a.concepts if c not in (BENIGN, UNINTERPRETABLE)
    ]  # keeps the order in which they were named
    if safety:
        union = list(dict.fromkeys(safety))
        text = next((a.explanation for a in top if set(a.concepts) & set(union)), "")
        return Adjudicated(union, best, text, names, False, "tie: union of safety concepts")
    a = top[0]
    return Adjudicated(a.concepts, a.confidence, a.explanation, names, False, "tie: earliest")


def cohen_kappa(a: list[int] | np.ndarray, b: list[int] | np.ndarray) -> float | None:
    """Cohen's kappa of two raters' labels; None when undefined (both raters constant and
    equal: chance agreement is 1)."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    labels = np.union1d(a, b)
    observed = float(np.mean(a == b))
    expected = float(sum(np.mean(a == v) * np.mean(b == v) for v in labels))
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa from an items x categories matrix of rater counts (same raters per item);
    None when undefined (every rating in one category)."""
    counts = np.asarray(counts, dtype=float)
    n_items = counts.shape[0]
    raters = counts.sum(axis=1)
    if n_items == 0 or raters.min() < 2 or not np.all(raters == raters[0]):
        raise ValueError("fleiss_kappa needs >= 1 item, >= 2 raters, the same number per item")
    n = raters[0]
    p_j = counts.sum(axis=0) / (n_items * n)
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = float(p_i.mean()), float((p_j**2).sum())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def kappa_per_concept(
    items: list[list[list[str]]], values: list[str]
) -> dict[str, dict[str, float | int | None]]:
    """Per label value, over items answered by >= 2 annotators (each item: the answers in a
    fixed annotator order): Cohen's kappa of the first two answers and Fleiss' kappa of the
    items sharing the most common number of raters, both on "names this concept: yes/no"."""
    multi = [answers for answers in items if len(answers) >= 2]
    out: dict[str, dict[str, float | int | None]] = {}
    if not multi:
        return out
    n_raters = Counter(len(a) for a in multi).most_common(1)[0][0]
    same = [a for a in multi if len(a) == n_raters]
    for value in values:
        first = [int(value in a[0]) for a in multi]
        second = [int(value in a[1]) for a in multi]
        yes = np.array([sum(value in ans for ans in a) for a in same])
        out[value] = {
            "cohen": _round(cohen_kappa(first, second)),
            "fleiss": _round(fleiss_kappa(np.stack([yes, n_raters - yes], axis=1))),
            "items": len(multi),
            "positives": int(sum(first) + sum(second)),
        }
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)
