"""Select the SAE: score every collected SAE for concept-specific interpretability, choose one,
and store the scores and the choice.

The configuration search of Safe-SAIL's protocol scores the candidates twice, so an SAE's scores
are keyed by a fingerprint of what they depend on besides its (fixed) weights: the corpus' labels
and the selection settings. With the same two, a rerun reads them back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from safesail.collection.chunks import StoredTextMaxima
from safesail.db.contracts import Workspace
from safesail.db.tables import SaeRecord, session_scope
from safesail.errors import SafesailError
from safesail.selection.config import SelectionConfig
from safesail.selection.contrastive import stored_pre_explanation
from safesail.selection.score import SaeScore, choose_sae, rank_saes, score_sae, stored_score


def select_sae(
    ws: Workspace,
    concepts: dict[int, list[str]],
    *,
    override: str | None = None,
    config: SelectionConfig | None = None,
    among: Sequence[str] | None = None,
) -> list[str]:
    """Score every collected SAE of ``ws`` (``concepts``: each corpus text's concepts) and
    select the best by ``config.rank_by``; with ``among``, the best of those (the chosen
    configuration's SAEs at other layers are scored, never chosen); ``override`` selects that
    SAE whatever the scores. Returns the scored SAEs' ids, best first."""
    records = [r for r in ws.saes() if r.collected]
    eligible = _eligible(records, override, among)
    config = config or SelectionConfig()
    fingerprint = _fingerprint(config, concepts)
    scores, pre = _score_all(ws, records, concepts, config, fingerprint)
    chosen = override or choose_sae(scores, pre, config.rank_by, eligible)
    ranking = rank_saes(scores)
    with session_scope(ws.engine) as session:
        for sae_id, score in ranking:
            record = session.get(SaeRecord, sae_id)
            record.selection_score = float(score.score)
            record.selection = {
                "fingerprint": fingerprint,
                "concepts": {c.concept: c._asdict() for c in score.concepts},
                "skipped": score.skipped,
                "pre_explanation": pre[sae_id],
                "rank_by": "override" if override else config.rank_by,
            }
            record.selected = sae_id == chosen
            session.add(record)
    return [sae_id for sae_id, _ in ranking]


def _eligible(
    records: list[SaeRecord], override: str | None, among: Sequence[str] | None
) -> list[str]:
    """The ids that may be chosen, or the one-line error that says why none can."""
    if not records:
        raise SafesailError("no collected SAEs — run `safesail collect` first")
    if override and override not in {r.id for r in records}:
        raise SafesailError(
            f"cannot select '{override}': not a collected SAE — pass --sae one of "
            f"{', '.join(r.id for r in records)}, or `safesail collect --sae {override}` first"
        )
    eligible = [r.id for r in records if among is None or r.id in among]
    if not eligible:
        raise SafesailError(f"none of {', '.join(among or ())} is a collected SAE — run `safesail collect` first")
    return eligible


def _fingerprint(config: SelectionConfig, concepts: dict[int, list[str]]) -> str:
    """What an SAE's scores depend on besides its weights: the corpus' labels and the config."""
    return hashlib.sha256(
        json.dumps([asdict(config), sorted(concepts.items())], default=sorted).encode()
    ).hexdigest()[:16]


def _score_all(
    ws: Workspace,
    records: list[SaeRecord],
    concepts: dict[int, list[str]],
    config: SelectionConfig,
    fingerprint: str,
) -> tuple[dict[str, SaeScore], dict[str, Any]]:
    """Each SAE's score and pre-explanation figure, read back where the fingerprint matches."""
    safety = ws.taxonomy.safety_concepts()
    scores, pre, pairs = {}, {}, None
    for record in records:
        if (record.selection or {}).get("fingerprint") == fingerprint:
            scores[record.id] = stored_score(record.selection_score, record.selection)
            pre[record.id] = record.selection["pre_explanation"]
            continue
        maxima = StoredTextMaxima(ws.engine, record.id, ws.config.memory_budget_bytes)
        labels = [concepts[t] for t in maxima.text_ids]
        scores[record.id] = score_sae(maxima, labels, safety, config)
        pre[record.id], pairs = stored_pre_explanation(
            ws.engine, maxima.text_ids, maxima, safety, pairs
        )
    return scores, pre
