"""The reader's decision and the answer it writes: labels, a 1-5 confidence on the rubric's
scale (bench/reference/RUBRIC.md) and one sentence naming what fires and where.

The rules come in the order an annotator applies them: those that need no meaning (too few
contexts, peaks on function words, punctuation, digits or format), word pieces inside unrelated
words, then a vote of the content windows' embedded readings; a position or length effect
overrides any reading but a clear concept. Each rule writes its own explanation so that an
answer can be checked against the windows it came from.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from safesail.experts.embed import Prototypes
from safesail.experts.windows import ReaderConfig, Reading
from safesail.features.token_kinds import CONTENT, DIGIT, FORMAT, FUNCTION, PUNCTUATION
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


@dataclass(frozen=True)
class ReaderAnswer:
    """A feature as the reader labels it."""

    labels: list[str]
    """One or two label values (concepts, "benign" or "uninterpretable")."""
    confidence: int
    """1-5, from how many of the top windows fit the reading (the rubric's scale)."""
    explanation: str
    """One sentence naming what fires and where."""


_KIND_WORDS = {
    FUNCTION: "function word",
    PUNCTUATION: "punctuation",
    DIGIT: "digit",
    FORMAT: "whitespace or format",
}


def _quote(tokens: Iterable[str], limit: int = 3) -> str:
    """The most frequent tokens, quoted as an annotator would cite them."""
    counts = Counter(tokens)
    shown = [json.dumps(t, ensure_ascii=False) for t, _ in counts.most_common(limit)]
    return ", ".join(shown) if shown else '""'


def _confidence(fit: int, n: int) -> int:
    """The rubric's scale: 5 every window fits, 4 all but one, 3 most, 2 a guess, 1 barely."""
    if n == 0:
        return 1
    if fit == n:
        return 5
    if fit == n - 1 and n >= 3:
        return 4
    if fit / n >= 0.5:
        return 3
    return 2 if fit >= 2 else 1


def _normal(token: str) -> str:
    return token.strip().lower()


def rule_answer(reads: list[Reading], config: ReaderConfig) -> ReaderAnswer | None:
    """The rules that need no meaning: no or too few contexts, peaks on non-content tokens
    (one token or one kind: `benign`; mixed kinds: `uninterpretable`). None when the windows
    must be read for meaning."""
    n = len(reads)
    peaks = [r.peak_token for r in reads]
    if n == 0:
        return ReaderAnswer([UNINTERPRETABLE], 5, "Never fires: no contexts to read.")
    if n < config.min_contexts:
        return ReaderAnswer(
            [UNINTERPRETABLE],
            4,
            f"Only {n} top context(s) (on {_quote(peaks)}): too few to state a pattern.",
        )
    same_token, same_count = Counter(_normal(t) for t in peaks).most_common(1)[0]
    one_token = same_count / n >= config.same_token_share
    kinds = Counter(r.kind for r in reads)
    kind, kind_count = kinds.most_common(1)[0]
    if kind != CONTENT and kind_count / n >= config.majority:
        example = next(r.phrase for r in reads if r.kind == kind)
        if one_token:
            return ReaderAnswer(
                [BENIGN],
                _confidence(same_count, n),
                f"Fires on {_quote(p for p in peaks if _normal(p) == same_token)} "
                f"({_KIND_WORDS[kind]}) wherever it occurs, e.g. “{example}”; not a concept.",
            )
        if kind_count / n >= config.one_kind_share:
            pattern = "a grammatical" if kind == FUNCTION else "a format"
            return ReaderAnswer(
                [BENIGN],
                max(1, _confidence(kind_count, n) - 1),
                f"Fires on {_KIND_WORDS[kind]} tokens ({_quote(peaks)}), e.g. “{example}”; "
                f"{pattern} pattern, not a concept.",
            )
        return ReaderAnswer(
            [UNINTERPRETABLE],
            3,
            f"Fires on {_KIND_WORDS[kind]} tokens of different sorts ({_quote(peaks)}) and "
            "on other kinds of token: no common pattern.",
        )
    if kinds[CONTENT] / n < config.majority:
        return ReaderAnswer(
            [UNINTERPRETABLE],
            2,
            f"Fires on tokens of different kinds ({_quote(peaks)}): no pattern.",
        )
    return None


def edge_effect(reads: list[Reading], config: ReaderConfig) -> str | None:
    """Why the windows look like a position or length effect (peaks on the first or last token
    of the texts, or activation on nearly every token), or None. The rubric calls these not
    interpretable unless a content pattern is visible, so it is checked after reading."""
    n = len(reads)
    peaks = [r.peak_token for r in reads]
    if Counter(_normal(t) for t in peaks).most_common(1)[0][1] / n >= config.same_token_share:
        return None  # one token throughout: a token feature, wherever it sits
    if sum(r.at_edge for r in reads) / n >= config.majority:
        return (
            f"Fires on the first or last token of its texts, whatever it is ({_quote(peaks)}): "
            "a position effect."
        )
    if np.mean([r.density for r in reads]) >= config.dense_share:
        return "Fires on nearly every token of its contexts: a length effect, no token pattern."
    return None


def piece_answer(
    reads: list[Reading], span_vectors: np.ndarray, config: ReaderConfig
) -> ReaderAnswer | None:
    """A feature that fires on word pieces ("cra", "ment") inside words of unrelated meaning
    (cracker, craftsman; disillusionment, bribery) reads spelling or tokenization, not
    meaning, so the whole words must not decide its label: `benign`, a coherent non-safety
    pattern (as the reference set's readers label headword and suffix features). None when
    the peaks are whole words, pieces of words that mean one thing ("terror" in terrorist,
    terrorism), or pieces in only some windows (mixed kinds)."""
    n = len(reads)
    pieces = [i for i, r in enumerate(reads) if r.fragment and r.kind == CONTENT]
    if len(pieces) / n < config.pieces_share:
        return None
    if _coherence(span_vectors[pieces]) >= config.coherent:
        return None
    peaks = [reads[i].peak_token for i in pieces]
    piece, count = Counter(_normal(t) for t in peaks).most_common(1)[0]
    words = _quote(reads[i].span for i in pieces)
    if count / n >= config.same_token_share:
        what = f"the piece {json.dumps(piece)}"
    else:
        what = f"word pieces ({_quote(peaks)})"
    edge = (
        " at the start of its texts" if sum(r.at_edge for r in reads) / n >= config.majority else ""
    )
    return ReaderAnswer(
        [BENIGN],
        3,
        f"Fires on {what}{edge} inside unrelated words ({words}): spelling or tokenization, "
        "not a concept.",
    )


def _coherence(vectors: np.ndarray) -> float:
    """Mean pairwise cosine of the spans' embeddings: do the windows fire on one kind of word?"""
    if len(vectors) < 2:
        return 1.0
    sims = vectors @ vectors.T
    return float((sims.sum() - np.trace(sims)) / (len(vectors) * (len(vectors) - 1)))


def content_answer(
    reads: list[Reading],
    scores: np.ndarray,
    span_vectors: np.ndarray,
    prototypes: Prototypes,
    config: ReaderConfig,
) -> ReaderAnswer:
    """Vote the content windows' readings. A concept (or two, when both are strong) needs a
    majority of all top windows; otherwise everyday readings, or spans of one kind, make the
    feature `benign`, and spans of nothing in common `uninterpretable`."""
    n = len(reads)
    content = [i for i, r in enumerate(reads) if r.kind == CONTENT]
    votes = prototypes.votes(scores[content], config.safety_margin)
    counts = Counter(votes)
    spans = [reads[i].span for i in content]
    safety = [(c, k) for c, k in counts.most_common() if c != BENIGN]
    labels = [
        c for rank, (c, k) in enumerate(safety[:2]) if rank == 0 or k / n >= config.second_share
    ]
    fit = sum(counts[c] for c in labels)
    if labels and fit / n >= config.majority:
        where = next(reads[i].phrase for i, v in zip(content, votes, strict=True) if v in labels)
        names = " and ".join(c.replace("_", " ") for c in labels)
        return ReaderAnswer(
            labels,
            _confidence(fit, n),
            f"Fires on {_quote(s for s, v in zip(spans, votes, strict=True) if v in labels)} "
            f"in {names} contexts, e.g. “{where}”.",
        )
    coherence = _coherence(span_vectors[content])
    if counts[BENIGN] / n >= config.majority or coherence >= config.coherent:
        benign = [i for i, v in zip(content, votes, strict=True) if v == BENIGN] or content
        topic = prototypes.nearest_topic(span_vectors[benign].mean(axis=0))
        return ReaderAnswer(
            [BENIGN],
            _confidence(max(counts[BENIGN], round(coherence * n)), n),
            f"Fires on {_quote(s for s, v in zip(spans, votes, strict=True) if v == BENIGN)} "
            f"in {f'everyday text ({topic})' if topic else 'ordinary text'}, "
            f"e.g. “{reads[benign[0]].phrase}”; not a safety concept.",
        )
    return ReaderAnswer(
        [UNINTERPRETABLE],
        2,
        f"Fires on {_quote(spans)}: the windows read as different things "
        f"({', '.join(c.replace('_', ' ') for c in counts)}).",
    )
