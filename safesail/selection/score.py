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
import scipy.sparse as sp
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


def _probe_f1(
    X: sp.csr_array,
    ranked: SortedColumns,
    pos: np.ndarray,
    rows: np.ndarray,
    config: SelectionConfig,
) -> float:
    """Cross-validated F1 of a logistic probe on the top features chosen per TRAIN fold, over
    the given rows of ``X`` (``ranked`` is ``X`` sorted once; ``pos`` labels every row).

    Choosing the features on all rows would let the test fold pick them, and among
    thousands of noise features some always separate a small sample by chance.
    """
    X_sub, y = X[rows], pos[rows]
    k = min(config.probe_features, X.shape[1])
    folds = StratifiedKFold(n_splits=config.probe_folds, shuffle=True, random_state=config.seed)
    f1s = []
    for train, test in folds.split(np.zeros(len(y)), y):
        member = np.zeros(X.shape[0], dtype=bool)
        member[rows[train]] = True
        top = _top_features(ranked.auroc(pos, member), k)
        X_top = X_sub[:, top].toarray()
        # Balanced weights: concepts are often much rarer than benign texts.
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000)
        )
        probe.fit(X_top[train], y[train])
        f1s.append(f1_score(y[test], probe.predict(X_top[test]), zero_division=0.0))
    return float(np.mean(f1s))


def _score_concept(
    X: sp.csr_array,
    ranked: SortedColumns,
    fires: sp.csr_array,
    pos: np.ndarray,
    neg: np.ndarray,
    name: str,
    config: SelectionConfig,
) -> ConceptScore:
    rows = np.flatnonzero(pos | neg)
    auroc = ranked.auroc(pos, pos | neg)
    best = int(np.argmax(auroc))
    specificity = feature_specificity(auroc, (pos @ fires) / pos.sum(), (neg @ fires) / neg.sum())
    specific = int(np.argmax(specificity))
    return ConceptScore(
        concept=name,
        n_pos=int(pos.sum()),
        n_neg=int(neg.sum()),
        best_auroc=float(auroc[best]),
        best_feature=best,
        best_specificity=float(specificity[specific]),
        specific_feature=specific,
        n_separating=int((auroc >= config.threshold_auroc).sum()),
        probe_f1=_probe_f1(X, ranked, pos, rows, config),
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
    Xr = as_sparse(X, "csr")
    labels = label_sets(concepts, Xr.shape[0])
    names = concept_names(safety_concepts)
    benign = concept_mask(labels, BENIGN)
    fires = fire_matrix(Xr, config.fire_fraction)
    ranked = SortedColumns(Xr)
    scored: list[ConceptScore] = []
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
        scored.append(_score_concept(Xr, ranked, fires, pos, neg, name, config))
    if not scored:
        got = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise SafesailError(
            f"no safety concept has enough texts to score an SAE: each concept needs at least "
            f"{config.min_texts} texts and {config.min_texts} contrast texts "
            f"({config.contrast}: {'all other' if config.contrast == 'rest' else BENIGN} texts); "
            f"got concept/contrast counts {got}"
        )
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
