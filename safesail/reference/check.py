"""`safesail reference check`: the simulated expert, triage and the accepted explanations,
each judged against the reference set (labels made by reading, bench/reference/).

All figures are on one half of the reference set (the **test** half by default: the dev half
is the one looked at while building; the split is fixed by `reference.labels.SPLIT_SEED`). Triage's
precision and recall are weighted by each stratum's inverse inclusion probability, so they
estimate the whole SAE rather than the candidate-heavy sample.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from safesail.db.contracts import LearnerPredictions, Workspace, read_record
from safesail.db.queries import require_selected_sae
from safesail.db.tables import Explanation, Feature
from safesail.errors import SafesailError
from safesail.reference.judge import judge
from safesail.reference.labels import (
    ReferenceSet,
    agrees,
    load,
    sae_sha256,
    weighted_precision_recall,
)
from safesail.stats import cohen_kappa, wilson_interval


def reference_dir() -> Path:
    """Where the reference sets live: $SAFESAIL_REFERENCE_DIR, else this checkout's
    bench/reference/ (the sets and their SAE weights are too large to ship in the package)."""
    configured = os.environ.get("SAFESAIL_REFERENCE_DIR")
    return (
        Path(configured)
        if configured
        else Path(__file__).resolve().parents[2] / "bench" / "reference"
    )


def default_file(ws: Workspace) -> Path:
    """<reference dir>/<selected SAE>.json."""
    return reference_dir() / f"{require_selected_sae(ws.engine)}.json"


def open_reference(ws: Workspace, path: Path) -> ReferenceSet:
    """The reference set, bound to the workspace SAE whose weights it was labeled on (found by
    the weights' sha256, whatever its id here); refused when no SAE here has those weights."""
    if not Path(path).exists():
        raise SafesailError(
            f"no reference set at {path} — make one with `safesail reference dump` and the rubric "
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
        f"`safesail sae add --path {shipped} --id {ref.sae_id}-ref` (the labeled weights ship "
        f"there), `safesail collect`, then `safesail select --sae {ref.sae_id}-ref`"
        if (shipped / "sae_weights.safetensors").exists()
        else "add the SAE the reference set was labeled on (`safesail sae add`), then collect it"
    )
    raise SafesailError(
        f"{path} was labeled on SAE weights {ref.sae_sha256[:12]}, which no SAE of this "
        f"workspace has ({', '.join(ids) or 'none'}), so its labels describe other features — {hint}"
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


def _learner(session: Session, sae_id: str) -> dict[int, list[str]]:
    """The active learner's concepts per feature: out-of-fold for the features it was taught,
    so a labeled feature's answer never saw its own label (empty without such predictions)."""
    stored = read_record(session, LearnerPredictions)
    if stored is None:
        return {}
    return {f: list(p.concepts) for f, p in stored.usable_for(sae_id).items() if p.concepts}


def log_test_run(path: Path, command: str, figures: dict[str, Any]) -> None:
    """One line per reading of a test half (date, commit, command, figures), appended to the
    log beside the reference set, so how often the test half was read is a recorded fact."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    line = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "command": command,
        "figures": figures,
    }
    try:
        with open(path, "a") as log:
            log.write(json.dumps(line) + "\n")
    except OSError as exc:
        raise SafesailError(
            f"cannot append to the test-run log {path} ({exc.strerror}), and the test half is read "
            "only where the reading is recorded — use --half dev, or make the folder writable"
        ) from None


def check(ws: Workspace, path: Path, half: str = "test", command: str = "") -> dict[str, Any]:
    """name -> figure, printed as name=value: per judged part (the simulated expert, triage,
    the learner, accepted explanations) its agreement with the readers beside kappa, the
    majority baseline and the safety-only figure; a test-half reading is logged first."""
    from safesail.experts.reader import read_features

    ref = open_reference(ws, path)
    labels = ref.half(half) if half != "all" else list(ref.labels.values())
    if not labels:
        raise SafesailError(f"{path} has no features in the '{half}' half — pick another --half (dev, test or all)")
    features = [r.feature for r in labels]
    expert = {
        f: a.labels for f, a in read_features(ws.engine, ref.sae_id, features, ws.taxonomy).items()
    }
    with Session(ws.engine) as session:
        candidate = dict(
            session.exec(
                select(Feature.index, Feature.candidate).where(
                    Feature.sae_id == ref.sae_id, Feature.index.in_(features)
                )
            ).all()
        )
        accepted = _accepted_auto(session, ref.sae_id, features)
        learner = _learner(session, ref.sae_id)
    flagged = {f: bool(c) for f, c in candidate.items()}
    precision, recall, n_flagged, n_safety = weighted_precision_recall(flagged, labels)
    safe = ["safety" if r.safety else "not" for r in labels]
    said = ["safety" if flagged.get(r.feature) else "not" for r in labels]
    kappa = cohen_kappa(safe, said)
    majority = max(safe.count("safety"), safe.count("not")) / len(safe)
    figures: dict[str, Any] = {
        "reference_half": half,
        "reader_agreement": ref.reader_agreement.line() if ref.reader_agreement else "none",
        **judge(expert, labels).figures("simulated_expert"),
        "triage_precision": round(precision, 3),
        "triage_recall": round(recall, 3),
        "triage_kappa_safety_vs_not": "undefined" if kappa is None else round(kappa, 3),
        "triage_majority_baseline": round(majority, 3),
        "triage_candidates_in_half": n_flagged,
        "reference_safety_features_in_half": n_safety,
        **judge(learner, labels).figures("learner"),
        **judge(accepted, labels).figures("accepted_explanations"),
        "accepted_explanations_in_half": len(accepted),
        f"reference_{half}_features": len(labels),
    }
    if half == "test":
        log_test_run(Path(path).with_name("test-runs.log"), command, figures)
    return figures


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
