"""Triage the chosen SAE's features: which are worth explaining in safety terms, and why
the others are not.

This is the text-level half: *where* a feature fires (which labelled texts), judged on the
same max-activation matrix ``X`` as SAE scoring (see ``safesail.selection.metrics``). What it
fires on, token by token, is judged per candidate by ``safesail.triage.tokens``; choosing
the SAE is ``safesail.selection.score``. The kinds of rejection reason live here, as every
stored reason is written and read through them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import binom

from safesail.errors import SafesailError
from safesail.selection.config import Contrast, require_contrast, require_fraction
from safesail.selection.metrics import (
    BENIGN,
    SortedColumns,
    as_maxima,
    as_sparse,
    concept_mask,
    concept_names,
    fire_matrix,
    label_sets,
    negatives,
)
from safesail.stats import wilson_bounds
from safesail.triage.config import TriageConfig


class FeatureSelectivity(NamedTuple):
    """Per-feature evidence of safety relevance, one row per scored concept."""

    auroc: np.ndarray
    """[n_concepts, d_sae] AUROC of each feature for concept texts vs contrast texts."""
    frac_pos: np.ndarray
    """[n_concepts, d_sae] fraction of the concept's texts on which the feature fires."""
    frac_neg: np.ndarray
    """[n_concepts, d_sae] fraction of the concept's contrast texts on which it fires."""
    n_pos: np.ndarray
    """[n_concepts] texts per concept."""
    n_neg: np.ndarray
    """[n_concepts] contrast texts per concept."""
    concepts: list[str]
    """Row names of ``auroc``/``frac_pos``: the safety concepts that have any texts."""


class Candidate(NamedTuple):
    """A feature that looks safety-relevant, with the concept it is most selective for."""

    feature: int
    concept: str
    auroc: float
    precision: float
    """Share of the texts it fires on (concept + contrast) that carry the concept."""
    precision_low: float
    """95% Wilson lower bound of ``precision`` (what ``min_precision`` is tested on)."""
    p_value: float
    """One-sided binomial p-value of the firing texts' concept share against its base rate."""
    support: int
    """Concept texts it fires on."""
    frac_pos: float
    frac_neg: float
    score: float
    """F1 of "the feature fires" as a detector of the concept, in [0, 1]."""


def feature_selectivity(
    X: object,
    concepts: Sequence[Sequence[str]],
    safety_concepts: Sequence[str],
    fire_fraction: float = 0.0,
    contrast: Contrast = "rest",
) -> FeatureSelectivity:
    """How selectively each feature fires on each safety concept rather than on its contrast
    texts (every other text for "rest", benign texts for "benign").

    AUROC alone can be high for a feature that fires on a sliver of the concept's texts,
    or for one that fires on nearly everything but a bit more strongly on the concept, so
    firing rates are kept alongside it for ``triage``. Concepts without any text are left
    out (``concepts`` names the rows); concepts with only a few texts are kept, so filter
    them first (e.g. by ``score_sae``'s ``skipped``) if their noise matters.

    A feature counts as firing on a text when its activation there exceeds ``fire_fraction``
    of the feature's largest activation (Safe-SAIL normalises by each neuron's own scale):
    a faint echo on other text should not disqualify a feature that is strong on the concept.
    """
    require_fraction("fire_fraction", fire_fraction, 0.0, 1.0)
    require_contrast(contrast)
    maxima = as_maxima(X)
    n_texts, d = maxima.shape
    labels = label_sets(concepts, n_texts)
    names = concept_names(safety_concepts)
    benign = concept_mask(labels, BENIGN)
    if contrast == "benign" and not benign.any():
        raise SafesailError(f"feature selectivity needs {BENIGN!r} texts to contrast with — add some "
            "(`safesail corpus add`) or use --contrast rest")
    masks = {name: m for name in names if (m := concept_mask(labels, name)).any()}
    if not masks:
        raise SafesailError(f"none of the safety concepts {names} labels any text — add labeled texts "
            "(`safesail corpus add`)")
    for name, pos in masks.items():
        if not negatives(pos, benign, contrast).any():
            raise SafesailError(f"no texts to contrast {name!r} with ({contrast}) — add other texts (`safesail corpus add`)")
    auroc = np.empty((len(masks), d))
    frac_pos = np.empty((len(masks), d))
    frac_neg = np.empty((len(masks), d))
    for start, block in maxima.feature_blocks():
        Xb = as_sparse(block, "csr")
        cols = slice(start, start + Xb.shape[1])
        fires = fire_matrix(Xb, fire_fraction)
        ranked = SortedColumns(Xb)
        for i, pos in enumerate(masks.values()):
            neg = negatives(pos, benign, contrast)
            auroc[i, cols] = ranked.auroc(pos, pos | neg)
            frac_pos[i, cols] = (pos @ fires) / pos.sum()
            frac_neg[i, cols] = (neg @ fires) / neg.sum()
    n_pos = np.array([m.sum() for m in masks.values()])
    n_neg = np.array([negatives(m, benign, contrast).sum() for m in masks.values()])
    return FeatureSelectivity(auroc, frac_pos, frac_neg, n_pos, n_neg, list(masks))


class _TextEvidence(NamedTuple):
    """Text-level triage arrays, [n_concepts, d_sae] each."""

    precision: np.ndarray
    low: np.ndarray
    support: np.ndarray
    p_value: np.ndarray
    f1: np.ndarray
    ok: np.ndarray
    """The feature passes every text-level gate for the concept."""


def _text_evidence(sel: FeatureSelectivity, config: TriageConfig) -> _TextEvidence:
    support = sel.frac_pos * sel.n_pos[:, None]
    fired = support + sel.frac_neg * sel.n_neg[:, None]
    precision = np.divide(support, fired, out=np.zeros_like(support), where=fired > 0)
    recall = sel.frac_pos
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(recall),
        where=precision + recall > 0,
    )
    low = wilson_bounds(support, fired)[0]
    base_rate = (sel.n_pos / np.maximum(sel.n_pos + sel.n_neg, 1))[:, None]
    hits, trials = np.rint(support), np.rint(fired)
    p_value = binom.sf(hits - 1, trials, base_rate)
    ok = (
        (low >= config.min_precision)
        & (support >= config.min_support - 1e-9)
        & (p_value <= config.alpha / max(support.size, 1))
    )
    return _TextEvidence(precision, low, support, p_value, f1, ok)


def triage(sel: FeatureSelectivity, config: TriageConfig | None = None) -> list[Candidate]:
    """Mark the features worth explaining in safety terms, most selective first.

    A feature qualifies for a concept when, of the texts it fires on, enough carry the
    concept (precision, by its Wilson lower bound), more than chance would give (binomial
    test against the concept's base rate, Bonferroni over features x concepts), and it fires
    on enough of them (support). Precision, not AUROC,
    is the gate: a sparse feature that fires on 5% of violence texts and on nothing else
    is a clean violence feature, but its AUROC is only ~0.53. Each qualifying feature is
    reported once, under the concept where its score (the F1 of firing as a detector of
    the concept) is highest (ties: the earlier concept); candidates are sorted by score
    (ties: lower feature index).

    This is the text-level half of triage: *where* a feature fires. What it fires on is
    judged afterwards, per candidate, by ``token_rejection``.
    """
    config = config or TriageConfig()
    ev = _text_evidence(sel, config)
    features = np.flatnonzero(ev.ok.any(axis=0))
    if not features.size:
        return []
    score = np.where(ev.ok, ev.f1, -np.inf)
    best = np.argmax(score[:, features], axis=0)
    candidates = [_candidate(sel, ev, int(f), int(c)) for f, c in zip(features, best, strict=True)]
    return sorted(candidates, key=lambda cand: (-cand.score, cand.feature))


def candidates_for(
    sel: FeatureSelectivity, concept_of: Mapping[int, str], config: TriageConfig | None = None
) -> dict[int, Candidate]:
    """The text-level evidence of features made candidates for a concept by another path
    (the token-level term path of ``Workspace.triage``), so that every candidate carries the
    same record whichever path admitted it."""
    ev = _text_evidence(sel, config or TriageConfig())
    index = {name: i for i, name in enumerate(sel.concepts)}
    return {f: _candidate(sel, ev, f, index[c]) for f, c in concept_of.items()}


def _candidate(sel: FeatureSelectivity, ev: _TextEvidence, f: int, c: int) -> Candidate:
    return Candidate(
        feature=f,
        concept=sel.concepts[c],
        auroc=float(sel.auroc[c, f]),
        precision=float(ev.precision[c, f]),
        precision_low=float(ev.low[c, f]),
        p_value=float(ev.p_value[c, f]),
        support=round(float(ev.support[c, f])),
        frac_pos=float(sel.frac_pos[c, f]),
        frac_neg=float(sel.frac_neg[c, f]),
        score=float(ev.f1[c, f]),
    )


# Kinds of triage rejection: every stored reason reads "<kind>: <detail>" (see reason_kind).
TEXT_LEVEL = "text level"
"""No concept is enriched among the texts the feature fires on (the text-level gates)."""
DENSE = "dense"
"""Fires outside its concept's texts at more than ``max_density`` x the mean feature rate."""
NO_TERM = "no concept term"
"""Too few top contexts peak on a safety keyword (``min_term_share``)."""


def reason_kind(reason: str) -> str:
    """The kind of a stored rejection reason: TEXT_LEVEL, DENSE, a non-content token class
    (token_kinds.FUNCTION, PUNCTUATION, DIGIT, FORMAT) or NO_TERM."""
    return reason.split(":", 1)[0]


def text_rejections(sel: FeatureSelectivity, config: TriageConfig | None = None) -> dict[int, str]:
    """Why each feature that passes no text-level gate set is not a candidate, for the
    concept where it came closest (highest precision lower bound): the first gate it fails."""
    config = config or TriageConfig()
    ev = _text_evidence(sel, config)
    out = {}
    for f in np.flatnonzero(~ev.ok.any(axis=0)):
        c = int(np.argmax(ev.low[:, f]))
        name, support, low = sel.concepts[c], round(float(ev.support[c, f])), ev.low[c, f]
        if not (sel.frac_pos[:, f].any() or sel.frac_neg[:, f].any()):
            detail = "fires on no text"
        elif support < config.min_support:
            detail = f"fires on {support} {name} texts (needs {config.min_support})"
        elif low < config.min_precision:
            detail = (
                f"{ev.precision[c, f]:.0%} of the texts it fires on are {name} (lower bound "
                f"{low:.2f} < {config.min_precision})"
            )
        else:
            detail = (
                f"its {name} share is within chance of the base rate (p={ev.p_value[c, f]:.2g})"
            )
        out[int(f)] = f"{TEXT_LEVEL}: {detail}"
    return out
