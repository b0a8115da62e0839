"""What the reader sees of a feature and what it takes from each window: the segment around
each top context's peak (as the Label Studio task and the reference set's blind view show it),
the peak's whole word, the marked span and the phrase around it, and the thresholds every step
of the reader shares (ReaderConfig, set on the reference set's dev half).

Windows come from the stored examples and context tokens only, never from corpus tags, triage
results or the oracle, so that the reader judges what an annotator would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import chunked
from safesail.db.tables import Context, Feature
from safesail.features.examples import TOP, feature_examples
from safesail.features.token_kinds import FORMAT, token_class
from safesail.reference.sample import N_TOP, window


@dataclass(frozen=True)
class ReaderConfig:
    """The reader's thresholds, set on the reference set's dev half."""

    min_contexts: int = 3
    """Fewer top contexts than this: "not interpretable" (the rubric's rule)."""
    marked_share: float = 0.5
    """A token belongs to the marked span when its activation is this share of the peak."""
    max_span_tokens: int = 4
    """The marked span is at most this many tokens (a phrase, not a sentence)."""
    phrase_side: int = 3
    """Tokens each side of the peak in the phrase that gives the span its context."""
    span_weight: float = 0.7
    """Weight of the marked span against the phrase around it: what fires comes first."""
    safety_margin: float = 0.04
    """A window votes for a concept only when it beats the best everyday prototype by this."""
    majority: float = 0.6
    """Share of the top windows that must agree on a reading."""
    second_share: float = 0.4
    """A second concept needs this share of the windows too."""
    same_token_share: float = 0.6
    """A non-content feature is one coherent token when this share of peaks are that token."""
    dense_share: float = 0.8
    """Marked on this share of its window's tokens: a length/position effect, not a token."""
    one_kind_share: float = 0.8
    """Peaks of one non-content kind (different tokens) in this share of the windows: a
    coherent grammatical or format pattern ("'m", " am"; digits of years)."""
    pieces_share: float = 0.8
    """Peaks inside longer words in this share of the windows: a word-piece feature."""
    coherent: float = 0.45
    """Mean pairwise cosine of the windows' spans above which they are one kind of word."""

    def __post_init__(self) -> None:
        shares = (
            self.marked_share,
            self.span_weight,
            self.majority,
            self.second_share,
            self.same_token_share,
            self.dense_share,
            self.one_kind_share,
            self.pieces_share,
            self.coherent,
        )
        if not all(0 < s <= 1 for s in shares):
            raise ValueError("the reader's shares and weights must be in (0, 1]")
        if self.min_contexts < 1 or self.max_span_tokens < 1 or self.phrase_side < 0:
            raise ValueError("min_contexts and max_span_tokens must be >= 1, phrase_side >= 0")


@dataclass(frozen=True)
class Window:
    """One top context as an annotator sees it: the segment around its peak (as in the Label
    Studio task and the reference set's blind view) with per-token activations."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    peak: int
    """Index of the strongest token in the segment."""
    text_start: bool
    """The peak is the first token of its text."""
    text_end: bool
    """The peak is the last token of its text."""

    @classmethod
    def of(cls, tokens: Sequence[str], acts: Sequence[float] | np.ndarray) -> Window:
        """The shown segment of a whole context (its tokens and their activations)."""
        values = np.asarray(acts, dtype=np.float32)
        if len(values) != len(tokens):
            raise ValueError(f"{len(tokens)} tokens but {len(values)} activations")
        lo, hi = window(values, len(tokens))
        peak = int(np.argmax(values)) if len(values) else 0
        return cls(
            tuple(tokens[lo:hi]),
            tuple(float(a) for a in values[lo:hi]),
            peak - lo,
            peak == 0,
            peak == len(tokens) - 1,
        )

    @property
    def peak_token(self) -> str:
        return self.tokens[self.peak] if self.tokens else ""


@dataclass(frozen=True)
class Reading:
    """What a reader takes from one window."""

    peak_token: str
    kind: str
    """token_class of the peak's whole word."""
    span: str
    """The peak's whole word plus adjacent strongly activating tokens: what fires."""
    phrase: str
    """A few tokens either side of the peak: where it fires."""
    density: float
    """Share of the window's tokens with any activation."""
    at_edge: bool
    """The peak is its text's first or last token."""
    fragment: bool
    """The peak is a piece of a longer word ("cra" in "craftsman")."""


def _starts_word(token: str) -> bool:
    return not token or not token[0].isalnum()


def _ends_word(token: str) -> bool:
    return not token or not token[-1].isalnum()


def _word_bounds(tokens: Sequence[str], i: int) -> tuple[int, int]:
    """[lo, hi) of the whole word the token at i belongs to: BPE pieces without a leading
    space continue the word before them ("Chat" + "GPT"), so a reader sees "ChatGPT"."""
    lo, hi = i, i + 1
    while lo > 0 and not _starts_word(tokens[lo]) and not _ends_word(tokens[lo - 1]):
        lo -= 1
    while hi < len(tokens) and not _starts_word(tokens[hi]) and not _ends_word(tokens[hi - 1]):
        hi += 1
    return lo, hi


def read_window(w: Window, config: ReaderConfig) -> Reading:
    """The marked span, its phrase and the peak's token kind of one window."""
    tokens, acts = w.tokens, np.asarray(w.acts)
    if not tokens:
        return Reading("", FORMAT, "", "", 0.0, False, False)
    top = float(acts[w.peak])
    lo, hi = _word_bounds(tokens, w.peak)
    # the kind of the whole word: "AN" in "D"+"AN" is not the function word "an"
    word = "".join(tokens[lo:hi])
    kind = token_class(word)
    fragment = len(word.strip()) > len(w.peak_token.strip())
    # grow the span over strongly marked neighbours, whole words at a time, up to the cap
    while hi - lo < config.max_span_tokens:
        left = acts[lo - 1] if lo > 0 else -np.inf
        right = acts[hi] if hi < len(tokens) else -np.inf
        if max(left, right) < config.marked_share * top:
            break
        new_lo, new_hi = _word_bounds(tokens, lo - 1) if left >= right else _word_bounds(tokens, hi)
        if max(hi, new_hi) - min(lo, new_lo) > config.max_span_tokens:
            break
        lo, hi = min(lo, new_lo), max(hi, new_hi)
    span = "".join(tokens[lo:hi]).strip()
    p_lo, p_hi = max(0, w.peak - config.phrase_side), w.peak + config.phrase_side + 1
    phrase = " ".join("".join(tokens[p_lo:p_hi]).split())
    return Reading(
        w.peak_token,
        kind,
        span or w.peak_token,
        phrase or span,
        float(np.mean(acts > 0)),
        w.text_start or w.text_end,
        fragment,
    )


def feature_windows(
    engine: Engine, sae_id: str, features: list[int] | None = None
) -> dict[int, list[Window]]:
    """Each feature's top windows as Label Studio shows them (N_TOP, strongest first), read
    from the stored examples and context tokens only."""
    with Session(engine) as session:
        query = select(Feature).where(Feature.sae_id == sae_id)
        parts = [None] if features is None else chunked(features)
        tops = {
            row.index: [e for e in feature_examples(row) if e.kind == TOP][:N_TOP]
            for part in parts
            for row in session.exec(query if part is None else query.where(Feature.index.in_(part)))
        }
        ids = sorted({e.text_id for examples in tops.values() for e in examples})
        tokens: dict[int, list[str]] = {}
        for part in chunked(ids):
            for c in session.exec(select(Context).where(Context.text_id.in_(part))):
                tokens[c.text_id] = c.tokens
    return {
        f: [Window.of(tokens[e.text_id], e.activations) for e in examples if e.text_id in tokens]
        for f, examples in tops.items()
    }
