"""The causal check of labeled safety features: does editing the feature change how often the
model refuses, and how strongly the model represents the feature's own concept? Stored as one
`causal_refusal_delta` Score per feature, on its human label.

Per feature: ablation (its decoder contribution removed wherever it fires) and steering (alpha
x its max activation x its decoder direction added everywhere, for each alpha), each compared
with the unedited model on the same held-out prompts. The effect of an edit is the mean
per-prompt change in refusal propensity, with a paired bootstrap interval over prompts. The
Score's value is the steering effect at the largest alpha (the strongest edit; sufficiency);
ablation (necessity) and every alpha are in its details. `details["concept"]` holds the same
effects on P(concept) of each safety concept of the label (`safesail.causal.probe`), read from
the same forward passes: one Score, one set of prompts, both measures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlmodel import Session, select

from safesail.causal.config import SCORER, CausalConfig
from safesail.causal.prompts import REFUSAL_OPENINGS, PromptSet
from safesail.db.tables import Explanation, Score
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

NO_PROBE = "too few corpus texts with or without the concept to train a probe"

if TYPE_CHECKING:
    from safesail.causal.intervene import FeatureEdit, Measurement, RefusalMeter
    from safesail.causal.probe import ConceptProbe


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
    """Mean per-prompt change of a measure (refusal propensity, P(concept)) with its interval,
    overall and per prompt group."""
    deltas = edited - base
    low, high = bootstrap_interval(deltas, config.bootstrap, config.level, config.seed)
    means = _group_means(deltas, groups)
    return {"delta": means.pop("all"), "low": low, "high": high, **means}


@dataclass(frozen=True)
class CausalResult:
    """One feature's causal check."""

    value: float
    interval: tuple[float, float]
    ablate: dict[str, float]
    steer: list[dict[str, float]]
    base: dict[str, float]
    concept: dict[str, dict[str, Any]]
    """Per concept of the label: the probe, base P(concept), ablation and steering effects."""
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
            "concept": self.concept,
            "prompts": prompts.summary(),
            "openings": list(REFUSAL_OPENINGS),
            "bootstrap": config.bootstrap,
            "seconds": round(self.seconds, 2),
        }


def _group_means(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {
        "all": float(values.mean()),
        **{g: float(values[groups == g].mean()) for g in ("harmful", "benign")},
    }


def check_feature(
    meter: RefusalMeter,
    base: Measurement,
    groups: np.ndarray,
    edit: FeatureEdit,
    config: CausalConfig,
    probes: Mapping[str, ConceptProbe | None] | None = None,
    others: Mapping[str, ConceptProbe | None] | None = None,
) -> CausalResult:
    """Ablate and steer one feature on the meter's prompts; `base` is the unedited model's.
    With `probes` (concept -> its probe, None for a concept without one; the meter must have
    their readout layer), also each concept's change in P(concept). With `others` (every
    concept's probe), also its change *beyond* the other concepts': P(concept) minus the mean
    P of the other concepts. A large steer pushes the residual off its distribution and can
    raise every probe at once; only the specific change says the edit moved this concept."""
    if probes and base.readout is None:
        raise ValueError("concept probes need a meter with their readout_layer")
    start = time.perf_counter()
    edits = [(None, edit.ablate()), *((float(a), edit.steer(a)) for a in config.alphas)]
    measured = [(alpha, meter.measure(edit.site, e)) for alpha, e in edits]

    def effects(
        read: Callable[[Measurement], np.ndarray],
    ) -> tuple[dict[str, float], list[dict[str, float]]]:
        """The ablation effect and the steering effects on one measure."""
        out = [
            {
                **({} if alpha is None else {"alpha": alpha}),
                **effect(read(m), read(base), groups, config),
            }
            for alpha, m in measured
        ]
        return out[0], out[1:]

    ablate, steer = effects(lambda m: m.refusal)
    concept: dict[str, dict[str, Any]] = {}
    for name, probe in (probes or {}).items():
        if probe is None:
            concept[name] = {"probe": None, "why": NO_PROBE}
            continue
        c_ablate, c_steer = effects(lambda m, p=probe: p.probability(m.readout))
        concept[name] = {
            "probe": probe.summary(),
            "base": _group_means(probe.probability(base.readout), groups),
            "ablate": c_ablate,
            "steer": c_steer,
        }
        rest = [p for c, p in (others or {}).items() if c != name and p is not None]
        if rest:
            s_ablate, s_steer = effects(
                lambda m, p=probe, rest=rest: (
                    p.probability(m.readout)
                    - np.mean([o.probability(m.readout) for o in rest], axis=0)
                )
            )
            concept[name]["specific"] = {
                "versus": sorted(o.concept for o in rest),
                "ablate": s_ablate,
                "steer": s_steer,
            }
    strongest = max(steer, key=lambda s: s["alpha"])
    return CausalResult(
        value=strongest["delta"],
        interval=(strongest["low"], strongest["high"]),
        ablate=ablate,
        steer=steer,
        base=_group_means(base.refusal, groups),
        concept=concept,
        seconds=time.perf_counter() - start,
    )


def safety_labels(session: Session, sae_id: str, safety: Sequence[str]) -> dict[int, Explanation]:
    """Each feature's human label when it names a safety concept (the features to check)."""
    from safesail.db.queries import human_labels

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
            "concept": (s.details or {}).get("concept", {}),
            "prompts": len(((s.details or {}).get("prompts") or {}).get("harmful", []))
            + len(((s.details or {}).get("prompts") or {}).get("benign", [])),
            "model": s.model,
            "version": s.prompt_version,
            "label": ", ".join(concepts),
            "when": s.created_at,
        }
        for s, concepts in rows
    ]
