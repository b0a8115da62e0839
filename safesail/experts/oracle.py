"""The corpus-tag oracle: a feature's label derived from the corpus' concept tags of the texts
it fires on most (`safesail label simulate --expert corpus-tags`).

It labels the texts' concept, not what the feature fires on: a feature on " like" or on the
digits of years that peaks in jailbreak prompts gets "jailbreak". Its tags are also what the
learner, triage and explainer see, so figures measured against it flatter them; a blind human
reader agreed with it on 60% of features. The default simulated expert is the reader
(safesail.experts.reader), which reads the activating windows. `noisy_answer` serves both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import chunked
from safesail.db.tables import Feature, corpus_concepts
from safesail.features.examples import TOP, feature_examples
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


@dataclass(frozen=True)
class OracleConfig:
    """How a feature's top contexts turn into its true label."""

    min_share: float = 0.5
    """A concept is the feature's when at least this share of its top texts carry it ..."""
    min_lift: float = 2.0
    """... and that share is at least this many times the concept's share of the corpus."""
    min_examples: int = 5
    """Fewer top contexts than this: "not interpretable"."""
    max_concepts: int = 2
    """At most this many concepts per feature (the most enriched first)."""

    def __post_init__(self) -> None:
        if not 0 < self.min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")
        if self.min_lift < 1 or self.min_examples < 1 or self.max_concepts < 1:
            raise ValueError("min_lift must be >= 1, min_examples and max_concepts >= 1")


def oracle_labels(
    engine: Engine,
    sae_id: str,
    features: list[int] | None = None,
    config: OracleConfig | None = None,
) -> dict[int, list[str]]:
    """True label(s) per feature: enriched safety concepts, else ["benign"] (not
    safety-related), or ["uninterpretable"] when it has too few top contexts."""
    config = config or OracleConfig()
    with Session(engine) as session:
        concepts = corpus_concepts(session)
        query = select(Feature).where(Feature.sae_id == sae_id)
        parts = [None] if features is None else chunked(features)
        rows = [
            row
            for part in parts
            for row in session.exec(query if part is None else query.where(Feature.index.in_(part)))
        ]
    n_texts = max(len(concepts), 1)
    base = Counter(c for labels in concepts.values() for c in set(labels))
    out: dict[int, list[str]] = {}
    for row in rows:
        texts = [ex.text_id for ex in feature_examples(row) if ex.kind == TOP]
        if len(texts) < config.min_examples:
            out[row.index] = [UNINTERPRETABLE]
            continue
        counts = Counter(c for t in texts for c in set(concepts.get(t, [])) if c != BENIGN)
        lifts = {
            c: (n / len(texts)) / (base[c] / n_texts)
            for c, n in counts.items()
            if n / len(texts) >= config.min_share and base[c]
        }
        chosen = [
            c for c, lift in sorted(lifts.items(), key=lambda kv: -kv[1]) if lift >= config.min_lift
        ]
        out[row.index] = chosen[: config.max_concepts] or [BENIGN]
    return out


def noisy_answer(
    truth: list[str], values: list[str], noise: float, rng: np.random.Generator
) -> list[str]:
    """An annotator's answer: the truth, or with probability `noise` one other label value."""
    if rng.random() >= noise:
        return list(truth)
    others = [v for v in values if v not in truth]
    return [str(rng.choice(others))] if others else list(truth)
