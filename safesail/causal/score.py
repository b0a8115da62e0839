"""The causal check of labeled safety features: does editing the feature change how often the
model refuses? Stored as one `causal_refusal_delta` Score per feature, on its human label.

Per feature: ablation (its decoder contribution removed wherever it fires) and steering (alpha
x its max activation x its decoder direction added everywhere, for each alpha), each compared
with the unedited model on the same held-out prompts. The effect of an edit is the mean
per-prompt change in refusal propensity, with a paired bootstrap interval over prompts. The
Score's value is the steering effect at the largest alpha (the strongest edit; sufficiency);
ablation (necessity) and every alpha are in its details.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlmodel import Session, select

from safesail.causal.config import SCORER, CausalConfig
from safesail.causal.prompts import REFUSAL_OPENINGS, PromptSet
from safesail.storage import Explanation, Score
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

if TYPE_CHECKING:
    from safesail.causal.intervene import FeatureEdit, RefusalMeter


def bootstrap_interval(
    deltas: np.ndarray, resamples: int, level: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired per-prompt differences."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(deltas), size=(resamples, len(deltas)))
    means = deltas[picks].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def effect(
    edited: np.ndarray, base: np.ndarray, groups: np.ndarray, config: CausalConfig
) -> dict[str, float]:
    """Mean change in refusal propensity (with its interval), overall and per prompt group."""
    deltas = edited - base
    low, high = bootstrap_interval(deltas, config.bootstrap, config.level, config.seed)
    out = {"delta": float(deltas.mean()), "low": low, "high": high}
    for group in ("harmful", "benign"):
        out[group] = float(deltas[groups == group].mean())
    return out


@dataclass(frozen=True)
class CausalResult:
    """One feature's causal check."""

    value: float
    interval: tuple[float, float]
    ablate: dict[str, float]
    steer: list[dict[str, float]]
    base: dict[str, float]
    seconds: float

    def details(self, prompts: PromptSet, config: CausalConfig) -> dict[str, Any]:
        return {
            "interval": list(self.interval),
            "level": config.level,
            "value_is": f"steer alpha={max(config.alphas)}",
            "alphas": list(config.alphas),
            "alpha_unit": "feature max activation",
            "ablate": self.ablate,
            "steer": self.steer,
            "base_refusal": self.base,
            "prompts": prompts.summary(),
            "openings": list(REFUSAL_OPENINGS),
            "bootstrap": config.bootstrap,
            "seconds": round(self.seconds, 2),
        }


def check_feature(
    meter: RefusalMeter,
    base: np.ndarray,
    groups: np.ndarray,
    edit: FeatureEdit,
    config: CausalConfig,
) -> CausalResult:
    """Ablate and steer one feature on the meter's prompts; `base` is the unedited model's."""
    start = time.perf_counter()
    ablate = effect(meter.measure(edit.site, edit.ablate()), base, groups, config)
    steer = []
    for alpha in config.alphas:
        steered = meter.measure(edit.site, edit.steer(alpha))
        steer.append({"alpha": float(alpha), **effect(steered, base, groups, config)})
    strongest = max(steer, key=lambda s: s["alpha"])
    return CausalResult(
        value=strongest["delta"],
        interval=(strongest["low"], strongest["high"]),
        ablate=ablate,
        steer=steer,
        base={
            "all": float(base.mean()),
            **{g: float(base[groups == g].mean()) for g in ("harmful", "benign")},
        },
        seconds=time.perf_counter() - start,
    )


def safety_labels(session: Session, sae_id: str, safety: Sequence[str]) -> dict[int, Explanation]:
    """Each feature's human label when it names a safety concept (the features to check)."""
    from safesail.queries import human_labels

    wanted = set(safety) - {BENIGN, UNINTERPRETABLE}
    return {f: e for f, e in human_labels(session, sae_id).items() if wanted & set(e.concepts)}


def scored_explanations(session: Session, version: str) -> set[int]:
    """Explanations that already have a causal score of this settings version."""
    rows = session.exec(
        select(Score.explanation_id).where(Score.scorer == SCORER, Score.prompt_version == version)
    )
    return set(rows)


def score_row(
    explanation_id: int,
    result: CausalResult,
    prompts: PromptSet,
    config: CausalConfig,
    model: str,
) -> Score:
    return Score(
        explanation_id=explanation_id,
        scorer=SCORER,
        value=result.value,
        model=model,
        prompt_version=config.version(),
        details=result.details(prompts, config),
    )


def causal_scores(session: Session, sae_id: str, index: int) -> list[dict[str, Any]]:
    """The causal scores of one feature's explanations, newest first (for the app's page)."""
    rows = session.exec(
        select(Score, Explanation.concepts)
        .join(Explanation, Explanation.id == Score.explanation_id)
        .where(Explanation.sae_id == sae_id, Explanation.feature == index, Score.scorer == SCORER)
        .order_by(Score.created_at.desc(), Score.id.desc())
    ).all()
    return [
        {
            "value": s.value,
            "interval": (s.details or {}).get("interval"),
            "ablate": (s.details or {}).get("ablate"),
            "steer": (s.details or {}).get("steer", []),
            "prompts": len(((s.details or {}).get("prompts") or {}).get("harmful", []))
            + len(((s.details or {}).get("prompts") or {}).get("benign", [])),
            "model": s.model,
            "version": s.prompt_version,
            "label": ", ".join(concepts),
            "when": s.created_at,
        }
        for s, concepts in rows
    ]
