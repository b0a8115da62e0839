"""Token-level triage: reject a text-level candidate by *what* it fires on.

A feature can fire in a concept's texts on tokens that carry no concept (function words,
digits, whatever every text holds); a reader labels features by the marked tokens, so
triage reads them too. Separate from the text-level half (``safesail.triage.text``) because it
works on a candidate's stored example contexts and token counts, not on the text x feature
matrix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from safesail.features.token_kinds import (
    DIGIT,
    FORMAT,
    FUNCTION,
    NON_CONTENT,
    PUNCTUATION,
    token_class,
    word_span,
)
from safesail.selection.config import Contrast, require_contrast
from safesail.selection.metrics import BENIGN
from safesail.triage.config import TriageConfig
from safesail.triage.text import DENSE, NO_TERM

if TYPE_CHECKING:  # collect imports torch; selection stays numpy and sklearn only
    from safesail.collection.chunks import ConceptTokenCounts


class Peak(NamedTuple):
    """Where one context of a feature peaks: the word a reader sees marked first."""

    word: str
    """The whole word holding the peak token (``token_kinds.word_at``: " ChatGPT", not "GPT")."""
    text_id: int
    top: bool
    """A top-activating context (else a random sample from one of its activation deciles)."""
    terms: tuple[str, ...] | None = None
    """Safety concepts one of whose terms (keywords) holds the peak word, or a word the
    feature marks as strongly next to it (None: not looked up)."""


TERM_WINDOW = (6, 4)
"""Tokens around the peak word searched for a keyword that contains it: enough for phrases
such as "ignore all previous instructions" or "sexual intercourse"."""

MARKED = 0.75
"""A token around the peak counts as marked as strongly as the peak when the feature fires on
it at this share of the peak or more: a reader sees every highlighted token, and a feature
that fires on a whole request ("steals passwords from his email account") is judged by all
of it. Weaker neighbours do not count, or a term merely near the peak would ("alma mater of
Senator X")."""

TermMatcher = Callable[[str, int, int], Sequence[str]]
"""(lowercased text, start, end) -> safety concepts with a keyword overlapping text[start:end]
(``Taxonomy.keywords_at``)."""


def _terms_near_peak(
    toks: Sequence[str], acts: np.ndarray, peak: tuple[int, int], terms: TermMatcher
) -> tuple[str, ...]:
    """Concepts whose term holds the peak word, or another word around it that the feature
    marks as strongly (a reader sees every marked token, not only the strongest)."""
    a, b = max(0, peak[0] - TERM_WINDOW[0]), min(len(toks), peak[1] + TERM_WINDOW[1])
    pieces = [t.lower() for t in toks[a:b]]
    starts = np.concatenate([[0], np.cumsum([len(t) for t in pieces])])
    text = "".join(pieces)
    marked = {peak}
    level = MARKED * float(acts[peak[0] : peak[1]].max())
    for i in range(a, b):
        if acts[i] >= level:
            marked.add(word_span(toks, i))
    found: dict[str, None] = {}
    for lo, hi in sorted(marked):
        lo, hi = max(lo, a), min(hi, b)
        for name in terms(text, int(starts[lo - a]), int(starts[hi - a])):
            found[name] = None
    return tuple(found)


def peaks_of(
    examples: Sequence[Any],
    tokens: Mapping[int, Sequence[str]],
    terms: TermMatcher | None = None,
) -> list[Peak]:
    """The peak word of each example context (``examples.Example``: text_id, kind, activations)
    whose tokens are known; kind 0 is a top-activating context. With ``terms``, each peak
    also names the concepts whose terms hold the peak word or a word near it that the
    feature marks as strongly (``MARKED``)."""
    out = []
    for e in examples:
        toks = tokens.get(e.text_id)
        if toks is None or not len(e.activations):
            continue
        lo, hi = word_span(toks, int(np.argmax(e.activations)))
        found = None if terms is None else _terms_near_peak(toks, e.activations, (lo, hi), terms)
        out.append(Peak("".join(toks[lo:hi]), e.text_id, e.kind == 0, found))
    return out


TERM_PATH_MIN_CONTEXTS = 3
"""Top contexts a feature needs before its peaks can make it a candidate on their own
(``TriageConfig.term_path_share``): one or two matching peaks are an anecdote."""


def term_concept(peaks: Sequence[Peak], share: float) -> str | None:
    """The safety concept whose terms more than ``share`` of the top contexts peak on (the
    one most of them carry; ties: the earlier concept), or None: the token-level way into
    the candidates, for features the text-level gates cannot judge (too few texts, or texts
    whose tags say where the corpus drew them from rather than what the marked word means).
    Peaks must have been looked up (``peaks_of`` with ``terms``)."""
    top = [p for p in peaks if p.top and p.terms is not None]
    if len(top) < TERM_PATH_MIN_CONTEXTS:
        return None
    counts = Counter(name for p in top for name in dict.fromkeys(p.terms or ()))
    if not counts:
        return None
    concept, n = counts.most_common(1)[0]
    return concept if n > share * len(top) else None


_CLASS_PLURAL = {
    FUNCTION: "function words",
    PUNCTUATION: "punctuation",
    DIGIT: "digits",
    FORMAT: "format tokens",
}


def contrast_firing_rate(
    counts: ConceptTokenCounts, concept: str, contrast: Contrast = "rest"
) -> np.ndarray:
    """[d_sae] share of the tokens of ``concept``'s contrast texts each feature fires on, from
    ``collection.chunks.ConceptTokenCounts`` (whose concepts must include BENIGN for "benign")."""
    require_contrast(contrast)
    if contrast == "benign":
        b = counts.concepts.index(BENIGN)
        return counts.fires[b] / max(counts.tokens[b], 1)
    c = counts.concepts.index(concept)
    return (counts.fires_all - counts.fires[c]) / max(counts.tokens_all - counts.tokens[c], 1)


def token_rejection(
    contrast_rate: float,
    peaks: Sequence[Peak],
    config: TriageConfig | None = None,
    mean_rate: float = 0.0,
) -> str | None:
    """Why a text-level candidate is still not a concept feature, judged by *what* it fires
    on; None when it passes.

    Text-level triage asks where a feature fires; a feature can fire in concept texts on
    tokens that carry no concept: " like" in role-play prompts, digits of years in
    dictionary glosses. A reader (bench/reference/RUBRIC.md) labels those by the marked
    tokens, so triage reads them too: how densely it fires outside the concept
    (``contrast_rate``, see ``contrast_firing_rate``, against ``max_density`` times the
    SAE's ``mean_rate``; 0 skips the test), the class of the words its top contexts peak on,
    and whether those words are a safety concept's terms (for peaks whose ``terms`` were
    looked up).
    """
    config = config or TriageConfig()
    if mean_rate > 0 and contrast_rate > config.max_density * mean_rate:
        return (
            f"{DENSE}: fires on {contrast_rate:.1%} of the tokens outside its concept's texts, "
            f"{contrast_rate / mean_rate:.0f}x the SAE's mean feature rate of {mean_rate:.2%} "
            f"(max {config.max_density:g}x)"
        )
    top = [p.word for p in peaks if p.top]
    non_content = [(w, c) for w in top if (c := token_class(w)) in NON_CONTENT]
    if top and len(non_content) > config.max_non_content * len(top):
        kind = Counter(c for _, c in non_content).most_common(1)[0][0]
        word, n = Counter(w for w, _ in non_content).most_common(1)[0]
        return (
            f"{kind}: {len(non_content)}/{len(top)} top contexts peak on non-content tokens, "
            f"mostly {_CLASS_PLURAL[kind]} ({word!r} {n}/{len(top)})"
        )
    looked_up = [p for p in peaks if p.top and p.terms is not None]
    with_term = sum(bool(p.terms) for p in looked_up)
    if looked_up and with_term < config.min_term_share * len(looked_up):
        word, n = Counter(p.word for p in looked_up).most_common(1)[0]
        return (
            f"{NO_TERM}: {with_term}/{len(looked_up)} top contexts peak on a safety keyword "
            f"(needs {config.min_term_share:.0%}); mostly {word!r} {n}/{len(looked_up)}"
        )
    return None
