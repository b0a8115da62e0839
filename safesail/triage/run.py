"""Triage one SAE: the text-level gates, then the token-level rules, written back per feature.

Text-level triage first (where the feature fires: enough of its texts carry the concept), then,
per text-level candidate, what it fires on (its firing rate and the words its contexts peak on).
A feature the text-level gates turn away still becomes a candidate when most of its top contexts
peak on one concept's term and it passes the same token rules (the term path,
``TriageConfig.term_path_share``): a reader labels by the marked tokens, and a feature firing on
" CHARACTER" in four persona set-ups is a jailbreak feature that four texts cannot prove. Every
feature that is not a candidate keeps the reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from safesail.collection.chunks import StoredTextMaxima, concept_token_counts
from safesail.db.queries import LIST_SAES, chunked
from safesail.db.tables import Context, Feature, SaeRecord, session_scope
from safesail.errors import SafesailError
from safesail.features.examples import Example, examples_of
from safesail.selection.metrics import BENIGN
from safesail.taxonomy import Taxonomy
from safesail.triage.config import TriageConfig
from safesail.triage.text import (
    Candidate,
    FeatureSelectivity,
    candidates_for,
    feature_selectivity,
    text_rejections,
    triage,
)
from safesail.triage.tokens import contrast_firing_rate, peaks_of, term_concept, token_rejection


def triage_sae(
    engine: Engine,
    taxonomy: Taxonomy,
    concepts: dict[int, list[str]],
    sae_id: str,
    config: TriageConfig,
    memory_budget_bytes: int,
) -> dict[str, int]:
    """Score every feature of the collected SAE ``sae_id`` per concept (``concepts``: each
    corpus text's concepts) and mark the safety candidates; returns, and stores on the SAE's
    record, the candidates per concept. The texts' maxima are read a block of features at a
    time, within ``memory_budget_bytes`` (``WorkspaceConfig.memory_budget_mb``)."""
    with Session(engine) as session:
        record = session.get(SaeRecord, sae_id)
        if record is None or not record.collected:
            raise SafesailError(
                f"cannot triage '{sae_id}': not a collected SAE — run `safesail collect` first "
                f"({LIST_SAES})"
            )
    maxima = StoredTextMaxima(engine, sae_id, memory_budget_bytes)
    selectivity = feature_selectivity(
        maxima,
        [concepts[t] for t in maxima.text_ids],
        taxonomy.safety_concepts(),
        config.fire_fraction,
        config.contrast,
    )
    text_level = {c.feature: c for c in triage(selectivity, config)}
    reasons = text_rejections(selectivity, config)
    counts = concept_token_counts(engine, sae_id, concepts, [*selectivity.concepts, BENIGN])
    outside = {
        name: contrast_firing_rate(counts, name, config.contrast) for name in selectivity.concepts
    }
    with session_scope(engine) as session:
        wanted = set(text_level)
        indices, mean_rate, examples = _feature_examples(
            session, sae_id, wanted, every_fired=config.term_path_share < 1.0
        )
        tokens = _context_tokens(session, examples)
        term_path = _term_path(
            examples, tokens, set(text_level), taxonomy, outside, config, mean_rate
        )
        for f in term_path:
            reasons.pop(f, None)
        reasons |= _token_rejections(
            text_level, examples, tokens, taxonomy, outside, config, mean_rate
        )
        text_level |= candidates_for(selectivity, term_path, config)
        verdicts = _verdicts(sae_id, indices, text_level, reasons, selectivity)
        if verdicts:  # one bulk UPDATE by primary key
            session.execute(update(Feature), verdicts)
        kept = [c for f, c in text_level.items() if f not in reasons]
        found = dict(Counter(c.concept for c in kept).most_common())
        record = session.get(SaeRecord, sae_id)
        record.triage = found
        session.add(record)
    return found


def _feature_examples(
    session: Session, sae_id: str, wanted: set[int], *, every_fired: bool
) -> tuple[list[int], float, dict[int, list[Example]]]:
    """Every feature index of the SAE, their mean firing rate, and the top examples of the
    ``wanted`` features (of every feature with examples when ``every_fired``: the term path)."""
    # columns, not Feature objects: at 65k features the rows and their blobs are GBs
    rows = session.exec(
        select(Feature.index, Feature.firing_rate, Feature.examples).where(Feature.sae_id == sae_id)
    ).all()
    indices = [int(index) for index, _, _ in rows]
    mean_rate = float(np.mean([rate for _, rate, _ in rows])) if rows else 0.0
    examples = {
        int(f): examples_of(blob) for f, _, blob in rows if f in wanted or (every_fired and blob)
    }
    return indices, mean_rate, examples


def _context_tokens(session: Session, examples: dict[int, list[Example]]) -> dict[int, list[str]]:
    """The tokens of every context the examples come from, by text id."""
    wanted = {e.text_id for exs in examples.values() for e in exs}
    return {
        text_id: toks
        for part in chunked(sorted(wanted))
        for text_id, toks in session.exec(
            select(Context.text_id, Context.tokens).where(Context.text_id.in_(part))
        )
    }


def _term_path(
    examples: dict[int, list[Example]],
    tokens: dict[int, list[str]],
    text_level: set[int],
    taxonomy: Taxonomy,
    outside: dict[str, Any],
    config: TriageConfig,
    mean_rate: float,
) -> dict[int, str]:
    """The features the text-level gates turned away whose top contexts peak on one concept's
    term and that pass the token rules, with that concept."""
    term_path: dict[int, str] = {}
    for f in sorted(set(examples) - text_level):
        peaks = peaks_of(examples[f], tokens, taxonomy.keywords_at)
        concept = term_concept(peaks, config.term_path_share)
        if concept in outside and not token_rejection(
            float(outside[concept][f]), peaks, config, mean_rate
        ):
            term_path[f] = concept
    return term_path


def _token_rejections(
    text_level: dict[int, Candidate],
    examples: dict[int, list[Example]],
    tokens: dict[int, list[str]],
    taxonomy: Taxonomy,
    outside: dict[str, Any],
    config: TriageConfig,
    mean_rate: float,
) -> dict[int, str]:
    """Why each text-level candidate that fails the token rules is rejected."""
    reasons: dict[int, str] = {}
    for f, named in text_level.items():
        concept = named.concept
        # the term rule needs a lexicon: only for concepts the taxonomy gives words
        words = taxonomy.concepts[concept].keywords + taxonomy.concepts[concept].terms
        terms = taxonomy.keywords_at if words else None
        peaks = peaks_of(examples[f], tokens, terms)
        if reason := token_rejection(float(outside[concept][f]), peaks, config, mean_rate):
            reasons[f] = reason
    return reasons


def _verdicts(
    sae_id: str,
    indices: list[int],
    text_level: dict[int, Candidate],
    reasons: dict[int, str],
    selectivity: FeatureSelectivity,
) -> list[dict[str, Any]]:
    """One row of triage columns per feature, for a bulk UPDATE."""
    best = np.argmax(selectivity.auroc, axis=0)
    verdicts = []
    for f in indices:
        # a token-level rejection keeps the concept (and AUROC) it was rejected for
        named = text_level.get(f)
        cand = named if f not in reasons else None
        verdicts.append(
            {
                "sae_id": sae_id,
                "index": f,
                "candidate": cand is not None,
                "triage_reason": reasons.get(f),
                "concept": named.concept if named else selectivity.concepts[best[f]],
                "safety_score": float(cand.score) if cand else 0.0,
                "auroc": float(named.auroc if named else selectivity.auroc[best[f], f]),
                "precision": float(cand.precision) if cand else None,
            }
        )
    return verdicts
