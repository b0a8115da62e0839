"""Rank candidate SAEs by concept-specific interpretability.

Safe-SAIL explains features of *one* SAE, so the SAE has to be chosen first, and the
choice should favour the dictionary whose features line up with the safety concepts we
want explained, not the one with the best reconstruction. For each safety concept we
contrast its texts with benign texts and ask: how well does the single best feature
separate them (AUROC), how many features separate them (Safe-SAIL's "L0 at threshold"),
and how well does a sparse probe on a handful of features do (SAEBench-style F1).

Triage of the chosen SAE's features is ``safesail.triage.text``; the statistics both use are
``safesail.selection.metrics``. Safe-SAIL's own pre-explanation metric on contrastive pairs is
``safesail.selection.contrastive`` and SAEBench's core metrics ``safesail.selection.core_metrics``: both are
shown beside this score (``ranking_rows``), not mixed into it, so the selected SAE (which the
reference set ``bench/reference/`` is bound to) stays what this score chooses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safesail.errors import SafesailError
from safesail.selection.config import RankBy, SelectionConfig
from safesail.selection.metrics import (
    BENIGN,
    SortedColumns,
    TextMaxima,
    as_maxima,
    as_sparse,
    concept_mask,
    concept_names,
    feature_specificity,
    fire_matrix,
    label_sets,
    negatives,
)

# Weights of the per-concept selection score; they sum to 1 so the score stays in [0, 1].
_W_SPECIFIC = 0.45
_W_PROBE = 0.45
_W_CONCENTRATION = 0.10

_DEFAULT_CONFIG = SelectionConfig()
"""``score_sae``'s default, made once (the config is frozen, so sharing it is safe)."""


class ConceptScore(NamedTuple):
    """How well one SAE separates one safety concept from benign texts."""

    concept: str
    n_pos: int
    n_neg: int
    best_auroc: float
    best_feature: int
    best_specificity: float
    """Max over features of (2*auroc - 1) * frac_pos * (1 - frac_neg): one feature that is
    strong on the concept AND quiet on its contrast texts (the same measure triage ranks by)."""
    specific_feature: int
    n_separating: int
    """Features with AUROC >= threshold_auroc (Safe-SAIL's L0 at threshold)."""
    probe_f1: float
    """Mean F1 over stratified folds of a logistic probe on the top features of each
    TRAIN fold (features are re-ranked per fold, so the test fold never chooses them)."""


class SaeScore(NamedTuple):
    """The selection score of one SAE and what it is made of."""

    score: float
    """Mean over scored concepts of 0.45*best_specificity + 0.45*chance-corrected
    probe_f1 + 0.10/n_separating (0 if none separates), in [0, 1]; see ``score_sae``."""
    concepts: list[ConceptScore]
    skipped: dict[str, str]
    """Concept -> why it was not scored (too few texts)."""


def stored_score(score: float, selection: dict[str, Any]) -> SaeScore:
    """The SaeScore an earlier ``select`` stored (``SaeRecord.selection_score`` and
    ``.selection``), read back."""
    concepts = [ConceptScore(**c) for c in selection["concepts"].values()]
    return SaeScore(score=score, concepts=concepts, skipped=selection["skipped"])


def _top_features(auroc: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest AUROCs; ties go to the lower index, for determinism."""
    return np.argsort(-auroc, kind="stable")[:k]


class _Concept(NamedTuple):
    """One scored concept: its texts, its contrast texts and the probe's folds over them."""

    name: str
    pos: np.ndarray
    neg: np.ndarray
    rows: np.ndarray
    """The texts scored (concept or contrast), as row indices."""
    folds: list[tuple[np.ndarray, np.ndarray]]
    """(train, test) positions within ``rows``, stratified by ``pos``."""


class _ColumnStats(NamedTuple):
    """What ``_score_concept`` needs of every feature for one concept, filled block by block."""

    auroc: np.ndarray
    frac_pos: np.ndarray
    frac_neg: np.ndarray
    fold_auroc: np.ndarray
    """[folds, d_sae] AUROC over each fold's TRAIN texts (the probe's feature choice)."""


def _column_stats(
    maxima: TextMaxima, plan: list[_Concept], fire_fraction: float
) -> list[_ColumnStats]:
    """Each concept's per-feature statistics, computed over one block of features at a time
    (each is a statistic of one column, so blocks give exactly the whole matrix's figures)."""
    d = maxima.shape[1]
    stats = [
        _ColumnStats(np.empty(d), np.empty(d), np.empty(d), np.empty((len(c.folds), d)))
        for c in plan
    ]
    for start, block in maxima.feature_blocks():
        Xb = as_sparse(block, "csr")
        cols = slice(start, start + Xb.shape[1])
        fires = fire_matrix(Xb, fire_fraction)
        ranked = SortedColumns(Xb)
        for c, out in zip(plan, stats, strict=True):
            out.auroc[cols] = ranked.auroc(c.pos, c.pos | c.neg)
            out.frac_pos[cols] = (c.pos @ fires) / c.pos.sum()
            out.frac_neg[cols] = (c.neg @ fires) / c.neg.sum()
            for j, (train, _) in enumerate(c.folds):
                member = np.zeros(Xb.shape[0], dtype=bool)
                member[c.rows[train]] = True
                out.fold_auroc[j, cols] = ranked.auroc(c.pos, member)
    return stats


def _probe_f1s(
    maxima: TextMaxima, plan: list[_Concept], stats: list[_ColumnStats], config: SelectionConfig
) -> list[float]:
    """Each concept's cross-validated F1 of a logistic probe on the top features chosen per
    TRAIN fold (``_ColumnStats.fold_auroc``), over its scored texts.

    Choosing the features on all rows would let the test fold pick them, and among
    thousands of noise features some always separate a small sample by chance. Only the
    chosen columns are read back, so the probe holds k features, not the SAE.
    """
    k = min(config.probe_features, maxima.shape[1])
    tops = [_top_features(fold, k) for s in stats for fold in s.fold_auroc]
    chosen = maxima.columns(tops)
    f1s = []
    for c in plan:
        y, fold_f1 = c.pos[c.rows], []
        for train, test in c.folds:
            X_top = as_sparse(next(chosen), "csr")[c.rows].toarray()
            # Balanced weights: concepts are often much rarer than benign texts.
            probe = make_pipeline(
                StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000)
            )
            probe.fit(X_top[train], y[train])
            fold_f1.append(f1_score(y[test], probe.predict(X_top[test]), zero_division=0.0))
        f1s.append(float(np.mean(fold_f1)))
    return f1s


def _score_concept(
    c: _Concept, s: _ColumnStats, probe_f1: float, config: SelectionConfig
) -> ConceptScore:
    best = int(np.argmax(s.auroc))
    specificity = feature_specificity(s.auroc, s.frac_pos, s.frac_neg)
    specific = int(np.argmax(specificity))
    return ConceptScore(
        concept=c.name,
        n_pos=int(c.pos.sum()),
        n_neg=int(c.neg.sum()),
        best_auroc=float(s.auroc[best]),
        best_feature=best,
        best_specificity=float(specificity[specific]),
        specific_feature=specific,
        n_separating=int((s.auroc >= config.threshold_auroc).sum()),
        probe_f1=probe_f1,
    )


def _chance_corrected_f1(c: ConceptScore) -> float:
    """F1 rescaled so that predicting every text positive (what a useless probe does) is 0."""
    p = c.n_pos / (c.n_pos + c.n_neg)
    chance = 2 * p / (1 + p)
    return max(0.0, (c.probe_f1 - chance) / (1 - chance))


def _concept_value(c: ConceptScore) -> float:
    concentration = 1.0 / c.n_separating if c.n_separating else 0.0
    return (
        _W_SPECIFIC * c.best_specificity
        + _W_PROBE * _chance_corrected_f1(c)
        + _W_CONCENTRATION * concentration
    )


def score_sae(
    X: object,
    concepts: Sequence[Sequence[str]],
    safety_concepts: Sequence[str],
    config: SelectionConfig = _DEFAULT_CONFIG,
) -> SaeScore:
    """Score one SAE by how interpretable its features are for the safety concepts.

    Per scored concept (its texts vs the contrast texts, see ``SelectionConfig.contrast``)
    the value is

        0.45 * best_specificity           # the best single feature: (2*auroc - 1) * frac_pos
                                          #   * (1 - frac_neg), so chance and always-on are 0
      + 0.45 * corrected probe_f1         # a few features together, cross-validated, rescaled
                                          # so an all-positive guess (F1 = 2p/(1+p)) is 0
      + 0.10 * (1 / n_separating, or 0 when no feature separates)

    and ``score`` is its mean over the scored concepts, in [0, 1]. The first two terms
    reward an SAE that *has* features for the concept; the small concentration term
    breaks near-ties in favour of an SAE whose concept lives in few features (Safe-SAIL's
    low "L0 at threshold"), because then explaining those few features explains the
    concept. It is kept small since splitting a concept into several clean features is
    not bad in itself. Concepts with fewer than ``min_texts`` texts (or contrast texts) are
    skipped and listed in ``skipped``; they are skipped for every SAE scored on the same
    texts, so scores stay comparable.
    """
    maxima = as_maxima(X)
    n_texts = maxima.shape[0]
    labels = label_sets(concepts, n_texts)
    names = concept_names(safety_concepts)
    benign = concept_mask(labels, BENIGN)
    folds = StratifiedKFold(n_splits=config.probe_folds, shuffle=True, random_state=config.seed)
    plan: list[_Concept] = []
    skipped: dict[str, str] = {}
    counts: dict[str, str] = {}
    for name in names:
        pos = concept_mask(labels, name)
        neg = negatives(pos, benign, config.contrast)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        counts[name] = f"{n_pos}/{n_neg}"
        if n_pos < config.min_texts or n_neg < config.min_texts:
            skipped[name] = (
                f"{n_pos} concept texts and {n_neg} contrast texts ({config.contrast}); "
                f"need at least {config.min_texts} of each"
            )
            continue
        rows = np.flatnonzero(pos | neg)
        plan.append(
            _Concept(name, pos, neg, rows, list(folds.split(np.zeros(len(rows)), pos[rows])))
        )
    if not plan:
        got = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise SafesailError(
            f"no safety concept has enough texts to score an SAE: each concept needs at least "
            f"{config.min_texts} texts and {config.min_texts} contrast texts "
            f"({config.contrast}: {'all other' if config.contrast == 'rest' else BENIGN} texts); "
            f"got concept/contrast counts {got} — add texts (`safesail corpus add`) or lower --min-texts"
        )
    stats = _column_stats(maxima, plan, config.fire_fraction)
    f1s = _probe_f1s(maxima, plan, stats, config)
    scored = [_score_concept(c, s, f1, config) for c, s, f1 in zip(plan, stats, f1s, strict=True)]
    score = float(np.mean([_concept_value(c) for c in scored]))
    return SaeScore(score=score, concepts=scored, skipped=skipped)


def rank_saes(scores: dict[str, SaeScore]) -> list[tuple[str, SaeScore]]:
    """SAEs best first; equal scores are ordered by name so the ranking is reproducible."""
    return sorted(scores.items(), key=lambda item: (-item[1].score, item[0]))


def choose_sae(
    scores: dict[str, SaeScore],
    pre: dict[str, dict[str, Any]],
    rank_by: RankBy,
    eligible: Sequence[str],
) -> str:
    """The best of the eligible SAEs by Safe-SAIL's pre-explanation index (mean I_CDF) or by
    today's score; ties, and an SAE whose index could not be measured, fall back on the score,
    then the id, so the choice is reproducible."""

    def key(sae_id: str) -> tuple[float, float, str]:
        index = pre[sae_id].get("index")
        primary = scores[sae_id].score if rank_by == "score" else index
        return (-(primary if primary is not None else -np.inf), -scores[sae_id].score, sae_id)

    return min(eligible, key=key)


def ranking_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per SAE for the ranked table (`safesail select`, the app): today's score and
    its rank, Safe-SAIL's pre-explanation index (mean I_CDF, ``safesail.selection.contrastive``) with
    its own rank and L0_t, SAEBench's core metrics (``safesail.selection.core_metrics``) and the
    candidates triage found (None: not triaged); ordered by the ranking that chose the
    selected SAE (``SelectionConfig.rank_by``). A figure not measured yet is None."""

    def rank_by(key: str) -> dict[str, int]:
        scored = sorted((r for r in rows if r[key] is not None), key=lambda r: (-r[key], r["id"]))
        return {r["id"]: i + 1 for i, r in enumerate(scored)}

    rows, ranked_by = [], "score"
    for r in records:
        selection = r.selection or {}
        pre = selection.get("pre_explanation") or {}
        core = r.core or {}
        if r.selected and selection.get("rank_by") == "pre_explanation":
            ranked_by = "pre_index"
        rows.append(
            {
                "id": r.id,
                "selected": bool(r.selected),
                "layer": r.layer,
                "d_sae": r.d_sae,
                "k": r.k,
                "score": r.selection_score,
                "pre_index": pre.get("index"),
                "l0_t": pre.get("l0_t"),
                **{m: core.get(m) for m in _CORE_COLUMNS},
                "candidates": sum(r.triage.values()) if r.triage is not None else None,
            }
        )
    score_rank, pre_rank = rank_by("score"), rank_by("pre_index")
    for row in rows:
        row["rank"], row["pre_rank"] = score_rank.get(row["id"]), pre_rank.get(row["id"])
    order = "pre_rank" if ranked_by == "pre_index" else "rank"
    return sorted(rows, key=lambda r: (r[order] or len(rows) + 1, r["id"]))


_CORE_COLUMNS = ("l0", "fve", "mse", "ce_loss_score", "dead_fraction", "dense_fraction")
