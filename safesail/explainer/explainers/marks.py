"""What the explainer is shown of a context, and what in it fires: the window around the
peak, the text with its strongest tokens marked <<like this>>, and the marked words an
explanation must name. The prompts (`prompts`) and the scorers show contexts through these,
and the answer's check (`prompts.ExplanationAnswer`) asks for these words.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from safesail.features.examples import peak_window

if TYPE_CHECKING:
    from safesail.explainer.config import ExplainConfig


class Shown(NamedTuple):
    """A context as the model will see it: tokens and their activations (zeros if none)."""

    tokens: list[str]
    acts: np.ndarray


def segment(tokens: list[str], acts: np.ndarray, config: ExplainConfig) -> Shown:
    """The window around the peak activation (the whole context if it never fires)."""
    if len(acts) == 0 or acts.max() <= 0:
        return Shown(tokens, acts)
    lo, hi = peak_window(acts, len(tokens), config.window_left, config.window_right)
    return Shown(tokens[lo:hi], acts[lo:hi])


def random_window(tokens: list[str], width: int, rng: np.random.Generator) -> Shown:
    """A non-activating text cut to the width of a segment, so length gives nothing away."""
    start = int(rng.integers(0, max(1, len(tokens) - width + 1)))
    part = tokens[start : start + width]
    return Shown(part, np.zeros(len(part), dtype=np.float32))


def render(shown: Shown, mark_fraction: float | None, marks: np.ndarray | None = None) -> str:
    """Tokens joined back into text; marked tokens (the strongest, or `marks`) as <<token>>."""
    if marks is None:
        top = float(shown.acts.max(initial=0.0))
        marks = (
            shown.acts >= mark_fraction * top
            if mark_fraction is not None and top > 0
            else np.zeros(len(shown.tokens), dtype=bool)
        )
    parts = []
    for token, marked in zip(shown.tokens, marks, strict=True):
        if marked and token.strip():
            lead = token[: len(token) - len(token.lstrip())]
            parts.append(f"{lead}<<{token.strip()}>>")
        else:
            parts.append(token)
    return " ".join("".join(parts).split())


def marked_words(shown: Shown, mark_fraction: float) -> tuple[list[str], list[str]]:
    """The words holding the marked tokens of one context, in order, and the marked pieces
    that are less than their word: a marked piece stands for the whole word ("Q" of "al-Qaeda"
    is "qaeda", "ite" of "Shiite" is "shiite"), since a reader, and an explanation, names
    words; an explanation that quotes the piece as marked still names what fires. Lower-case;
    one-character words and pieces are dropped."""
    top = float(shown.acts.max(initial=0.0))
    if top <= 0:
        return [], []
    text = "".join(shown.tokens)
    starts = np.cumsum([0] + [len(t) for t in shown.tokens])
    found = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"\w+", text)]
    words: list[str] = []
    pieces: list[str] = []
    for i, act in enumerate(shown.acts):
        if act < mark_fraction * top:
            continue
        held = [w for b, e, w in found if b < starts[i + 1] and e > starts[i] and len(w) >= 2]
        words += [w for w in held if w not in words]
        piece = shown.tokens[i].strip().lower()
        if len(piece) >= 2 and piece not in held and piece not in pieces:
            pieces.append(piece)
    return words, pieces


def ranked_fired_tokens(contexts: list[Shown], mark_fraction: float) -> list[str]:
    """The marked words of the shown contexts (`marked_words`), the most frequent first (ties
    in order of appearance), then the marked pieces: what an explanation must name one of,
    and what a sentence drafted without an LLM quotes (its first ones, so words)."""
    words: dict[str, int] = {}
    pieces: dict[str, int] = {}
    for shown in contexts:
        held, parts = marked_words(shown, mark_fraction)
        for word in held:
            words[word] = words.get(word, 0) + 1
        for piece in parts:
            pieces[piece] = pieces.get(piece, 0) + 1
    ranked = sorted(words, key=lambda w: -words[w])
    return ranked + sorted((p for p in pieces if p not in words), key=lambda p: -pieces[p])


def fired_tokens(contexts: list[Shown], mark_fraction: float) -> set[str]:
    """The marked tokens of the shown contexts, which the explanation must name."""
    return set(ranked_fired_tokens(contexts, mark_fraction))


def names_what_fires(sentence: str, fired: set[str]) -> bool:
    """The sentence quotes or names at least one of the tokens the feature fires on."""
    words = set(re.findall(r"[\w'-]+", sentence.lower()))
    return any(token in words or (len(token) > 3 and token in sentence.lower()) for token in fired)
