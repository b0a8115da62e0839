"""Safety + benign text corpora: the record every corpus is made of, and what all of them share.

A corpus comes from one of two places, each in its own module: the default corpus built from
real data shipped in packages (``safesail.corpus.build``, reading ``safesail.corpus.packages``
and ``safesail.corpus.sources``) and users' own files (``safesail.corpus.files``). Both produce
``CorpusRecord``s whose concepts are ordered the same way, so a text labelled twice compares
equal however it came in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from safesail.taxonomy import BENIGN, Taxonomy


@dataclass(frozen=True)
class CorpusRecord:
    """One text with where it came from, its licence and its concepts."""

    text: str
    source: str
    license: str
    concepts: tuple[str, ...]


def ordered_concepts(concepts: Iterable[str], taxonomy: Taxonomy) -> tuple[str, ...]:
    """Concepts in taxonomy order; benign only when nothing else applies."""
    chosen = set(concepts)
    if any(taxonomy.concepts[c].safety for c in chosen):
        chosen.discard(BENIGN)
    return tuple(name for name in taxonomy.concepts if name in chosen)


def corpus_summary(records: Sequence[CorpusRecord]) -> dict[str, int]:
    """Texts per concept (a multi-concept text counts once for each), most frequent first."""
    counts = Counter(c for record in records for c in record.concepts)
    return dict(counts.most_common())
