"""Simulated expert gold labels (from `safesail.experts.oracle`) for tests, benchmarks and trying the
explainer without people: what adjudicated human labels look like in the database."""

from __future__ import annotations

from collections import Counter

from sqlmodel import Session, select

from safesail.db.queries import chunked
from safesail.db.tables import Context, Explanation, Feature, session_scope
from safesail.experts.oracle import oracle_labels
from safesail.features.examples import TOP, feature_examples


def peak_tokens(session: Session, feature: Feature, n: int = 3) -> list[str]:
    """The most common peak tokens of a feature's top contexts."""
    counts: Counter[str] = Counter()
    for example in feature_examples(feature):
        if example.kind == TOP:
            tokens = session.get(Context, example.text_id).tokens
            counts[tokens[int(example.activations.argmax())].strip()] += 1
    return [t for t, _ in counts.most_common(n) if t]


def seed_gold(
    engine,
    sae_id: str,
    features: list[int],
    author: str = "oracle",
    given: dict[int, tuple[list[str], str]] | None = None,
) -> int:
    """Accepted human Explanations for the features that have none yet; returns how many.
    Labels and sentences come from `given` (feature -> (concepts, sentence), e.g. the reference
    set read by people) or else from the corpus-tag oracle."""
    truth = (
        {f: given[f][0] for f in features if f in given}
        if given is not None
        else oracle_labels(engine, sae_id, features)
    )
    added = 0
    with session_scope(engine) as session:
        have = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == sae_id, Explanation.source == "human"
                )
            )
        )
        rows = [
            row
            for part in chunked(list(truth))
            for row in session.exec(
                select(Feature).where(Feature.sae_id == sae_id, Feature.index.in_(part))
            )
        ]
        for row in rows:
            if row.index in have:
                continue
            concepts = truth[row.index]
            words = ", ".join(peak_tokens(session, row)) or "no clear tokens"
            text = (
                given[row.index][1]
                if given is not None
                else f"Fires on {' and '.join(c.replace('_', ' ') for c in concepts)} text such as {words}."
            )
            session.add(
                Explanation(
                    sae_id=sae_id,
                    feature=row.index,
                    source="human",
                    status="accepted",
                    concepts=concepts,
                    text=text,
                    confidence=0.9,
                    author=author,
                )
            )
            added += 1
    return added
