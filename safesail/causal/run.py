"""`safesail causal`: the causal check of every human-labeled safety feature of an SAE.

Resumable and idempotent: each feature's Score is committed as soon as it is computed, and a
feature whose human label already has a score of the same settings version is skipped, so an
interrupted run continues where it stopped and a rerun does nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlmodel import Session
from tqdm.auto import tqdm

from safesail.causal.intervene import RefusalMeter, sae_feature_edit
from safesail.causal.probe import concept_probes, readout_layer
from safesail.causal.prompts import held_out_prompts
from safesail.causal.score import (
    CausalConfig,
    check_feature,
    safety_labels,
    score_row,
    scored_explanations,
)
from safesail.db.contracts import Workspace
from safesail.db.queries import LIST_SAES, require_selected_sae
from safesail.db.tables import Explanation, Feature, SaeRecord, session_scope
from safesail.errors import SafesailError
from safesail.model.lm import LanguageModel
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


@dataclass(frozen=True)
class CausalRun:
    """What a run did: features scored now, already scored, and their values."""

    sae_id: str
    scored: dict[int, float]
    skipped: int
    seconds_per_feature: float | None


def _spread(todo: list[int], labels: dict[int, Explanation], safety: list[str]) -> list[int]:
    """The features in turns over their concepts (each concept's lowest index first), so that
    a limited run checks as many concepts as it can rather than the lowest indices."""
    queues: dict[str, list[int]] = {}
    for feature in todo:
        first = next(c for c in labels[feature].concepts if c in safety)
        queues.setdefault(first, []).append(feature)
    order = []
    for turn in range(max((len(q) for q in queues.values()), default=0)):
        order += [q[turn] for _, q in sorted(queues.items()) if turn < len(q)]
    return order


def run_causal(
    ws: Workspace,
    lm: LanguageModel,
    config: CausalConfig | None = None,
    *,
    sae_id: str | None = None,
    features: Sequence[int] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> CausalRun:
    """Score the human-labeled safety features of the SAE (default: the selected one), or the
    given features among them, at most `limit` new ones (taking the concepts in turns)."""
    from safesail.model.saes import load_sae, site_of

    config = config or CausalConfig()
    sae_id = sae_id or require_selected_sae(ws.engine)
    version = config.version()
    safety = [c for c in ws.taxonomy.safety_concepts() if c not in (BENIGN, UNINTERPRETABLE)]
    with Session(ws.engine) as session:
        record = session.get(SaeRecord, sae_id)
        if record is None or not record.path:
            raise SafesailError(f"unknown SAE '{sae_id}' (or one without weights) — {LIST_SAES}")
        site = site_of(record)
        layer = readout_layer(lm, config)
        if layer < site.layer:
            raise SafesailError(
                f"readout_layer {layer} is upstream of {sae_id}'s site (layer {site.layer}), so "
                f"no edit there can reach it — use --readout-layer {site.layer} or later"
            )
        labels = safety_labels(session, sae_id, safety)
        if features is not None:
            missing = sorted(set(features) - set(labels))
            if missing:
                raise SafesailError(
                    f"feature(s) {', '.join(map(str, missing))} of {sae_id} have no human "
                    "safety label — label them first (`safesail label push`, then `safesail label pull`), "
                    "or leave them out of --feature"
                )
            labels = {f: labels[f] for f in features}
        done = scored_explanations(session, version)
        todo = sorted(f for f, e in labels.items() if e.id not in done)
        scales = {
            f.index: f.max_act for f in (session.get(Feature, (sae_id, i)) for i in todo) if f
        }
    skipped = len(labels) - len(todo)
    todo = todo if limit is None else _spread(todo, labels, safety)[:limit]
    if not todo:
        return CausalRun(sae_id, {}, skipped, None)
    prompts = held_out_prompts(
        ws.engine, ws.config.cache_dir, config.n_harmful, config.n_benign, config.seed
    )
    groups = np.asarray(prompts.groups)
    probes = concept_probes(ws.engine, lm, safety, config, ws.config.workspace / "probes")
    meter = RefusalMeter(
        lm,
        prompts.texts,
        batch_size=config.batch_size,
        readout_layer=layer,
        replay_below=site.layer,
    )
    base = meter.measure()
    sae = load_sae(record, device=str(lm.device), dtype=str(lm.dtype).removeprefix("torch."))
    scored: dict[int, float] = {}
    seconds = []
    for index in tqdm(todo, desc=f"causal check {sae_id}", unit="feature", disable=not progress):
        edit = sae_feature_edit(sae, site, index, scales.get(index, 0.0))
        wanted = {c: probes.get(c) for c in labels[index].concepts if c in safety}
        result = check_feature(meter, base, groups, edit, config, wanted, probes)
        with session_scope(ws.engine) as session:
            session.add(score_row(labels[index].id, result, prompts, config, lm.name))
        scored[index] = result.value
        seconds.append(result.seconds)
    return CausalRun(sae_id, scored, skipped, float(np.mean(seconds)))
