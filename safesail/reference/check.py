"""`safesail reference check`: the simulated expert, triage and the accepted explanations,
each judged against the reference set (labels made by reading, bench/reference/).

All figures are on one half of the reference set (the **test** half by default: the dev half
is the one looked at while building; the split is fixed by `reference.labels.SPLIT_SEED`). Triage's
precision and recall are weighted by each stratum's inverse inclusion probability, so they
estimate the whole SAE rather than the candidate-heavy sample.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from safesail.db.contracts import Workspace
from safesail.db.queries import require_selected_sae
from safesail.db.tables import Explanation, Feature
from safesail.errors import SafesailError
from safesail.reference.labels import (
    ReferenceSet,
    agrees,
    load,
    sae_sha256,
    weighted_precision_recall,
)
from safesail.stats import wilson_interval

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "bench" / "reference"


def default_file(ws: Workspace) -> Path:
    """bench/reference/<selected SAE>.json of this checkout."""
    return REFERENCE_DIR / f"{require_selected_sae(ws.engine)}.json"


def open_reference(ws: Workspace, path: Path) -> ReferenceSet:
    """The reference set, bound to the workspace SAE whose weights it was labeled on (found by
    the weights' sha256, whatever its id here); refused when no SAE here has those weights."""
    if not Path(path).exists():
        raise SafesailError(
            f"no reference set at {path}: make one with `safesail reference dump` and the rubric "
            "in bench/reference/RUBRIC.md"
        )
    ref = load(path, ws.taxonomy.label_values())
    ids = [s.id for s in ws.saes()]
    ordered = sorted(ids, key=lambda i: i != ref.sae_id)  # the recorded id first: usually it
    for sae_id in ordered:
        if sae_sha256(ws.engine, sae_id) == ref.sae_sha256:
            return replace(ref, sae_id=sae_id)
    shipped = Path(path).with_suffix("")
    hint = (
        f"; the labeled weights ship in {shipped}: `safesail sae add --path {shipped} "
        f"--id {ref.sae_id}-ref`, `safesail collect`, then `safesail select --sae {ref.sae_id}-ref`"
        if (shipped / "sae_weights.safetensors").exists()
        else ""
    )
    raise SafesailError(
        f"{path} was labeled on SAE weights {ref.sae_sha256[:12]}, which no SAE of this "
        f"workspace has ({', '.join(ids) or 'none'}): the labels describe other features{hint}"
    )


def _accepted_auto(session: Session, sae_id: str, features: list[int]) -> dict[int, list[str]]:
    """The concepts of each accepted automatic explanation among these features (what the
    calibrated explainer claims without a person; the latest where a feature has several)."""
    rows = session.exec(
        select(Explanation.feature, Explanation.concepts)
        .where(
            Explanation.sae_id == sae_id,
            Explanation.source == "auto",
            Explanation.status == "accepted",
            Explanation.feature.in_(features),
        )
        .order_by(Explanation.created_at, Explanation.id)  # the latest wins
    )
    return {int(f): list(concepts) for f, concepts in rows}


def _interval(agree: int, n: int) -> str:
    lo, hi = wilson_interval(agree, n)
    return f"[{lo:.2f}, {hi:.2f}]"


def check(ws: Workspace, path: Path, half: str = "test") -> dict[str, Any]:
    """name -> figure, printed as name=value; the last is the number of reference features."""
    from safesail.experts.reader import read_features

    ref = open_reference(ws, path)
    labels = ref.half(half) if half != "all" else list(ref.labels.values())
    if not labels:
        raise SafesailError(f"{path} has no features in the '{half}' half")
    features = [r.feature for r in labels]
    answers = read_features(ws.engine, ref.sae_id, features, ws.taxonomy)
    expert = sum(agrees(answers[r.feature].labels, r) for r in labels if r.feature in answers)
    with Session(ws.engine) as session:
        candidate = dict(
            session.exec(
                select(Feature.index, Feature.candidate).where(
                    Feature.sae_id == ref.sae_id, Feature.index.in_(features)
                )
            ).all()
        )
        accepted = _accepted_auto(session, ref.sae_id, features)
    precision, recall, n_flagged, n_safety = weighted_precision_recall(
        {f: bool(c) for f, c in candidate.items()}, labels
    )
    auto_agree = sum(agrees(accepted[r.feature], r) for r in labels if r.feature in accepted)
    pair = ref.reader_agreement
    return {
        "reference_half": half,
        "reader_agreement": (
            f"{pair[0] / pair[1]:.3f} of {pair[1]} double-labeled" if pair and pair[1] else "none"
        ),
        "simulated_expert_agreement": round(expert / len(labels), 3),
        "simulated_expert_agreement_interval": _interval(expert, len(labels)),
        "triage_precision": round(precision, 3),
        "triage_recall": round(recall, 3),
        "triage_candidates_in_half": n_flagged,
        "reference_safety_features_in_half": n_safety,
        "accepted_explanations_in_half": len(accepted),
        "accepted_agreement_reference": (
            round(auto_agree / len(accepted), 3) if accepted else "none accepted"
        ),
        f"reference_{half}_features": len(labels),
    }


def reference_agreement(ws: Workspace) -> dict[str, Any] | None:
    """For `status --json` (calibration.reference_agreement): how many accepted automatic
    explanations of the selected SAE's reference features agree with the readers, with the
    Wilson interval; None when this checkout has no reference set for these weights."""
    if ws.selected_sae is None or not default_file(ws).exists():
        return None
    try:
        ref = open_reference(ws, default_file(ws))
    except SafesailError:
        return None
    with Session(ws.engine) as session:
        accepted = _accepted_auto(session, ref.sae_id, list(ref.labels))
    agree = sum(agrees(concepts, ref.labels[f]) for f, concepts in accepted.items())
    lo, hi = wilson_interval(agree, len(accepted))
    return {
        "accepted_in_reference": len(accepted),
        "agree": agree,
        "rate": round(agree / len(accepted), 3) if accepted else None,
        "wilson_95": [round(lo, 3), round(hi, 3)],
        "reference_features": len(ref.labels),
    }
