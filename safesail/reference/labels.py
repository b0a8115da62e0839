"""The reference set: features labeled by people *reading* them, the yardstick for the simulated
expert, triage and the explainer (bench/reference/).

Every figure the system reported before was measured against a label derived from corpus tags,
the same tags its parts use, so it measured the simulation against itself. A reference label is
made from the blind view alone (`safesail.reference.sample`), with the rubric in
bench/reference/RUBRIC.md, and is bound to the exact SAE weights by their sha256.

- `load` / `assign_splits`: the labels file and its seeded dev/test halves (test only for final
  figures).
- `agrees` / `weighted_precision_recall`: how a part's answers are judged against the labels.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session

from safesail.db.queries import LIST_SAES
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

SPLIT_SEED = 20261201
"""Fixed before any label was read: the dev/test split never changes."""


def sae_sha256(engine: Engine, sae_id: str) -> str:
    """sha256 of the SAE's weights file: a reference label belongs to exactly these weights."""
    with Session(engine) as session:
        record = session.get(SaeRecord, sae_id)
    if record is None:
        raise SafesailError(f"unknown SAE '{sae_id}' — {LIST_SAES}")
    weights = Path(record.path) / "sae_weights.safetensors"
    if not weights.exists():
        raise SafesailError(f"SAE {sae_id} has no weights file at {weights} — restore it there, or "
            f"`safesail sae remove {sae_id}` and add it again")
    stat = weights.stat()
    return _file_sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so `status --json` (which the app polls) does not re-read
    the weights every time, yet a rewritten file is hashed again."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ReferenceLabel:
    """One feature as a reader labeled it."""

    feature: int
    labels: tuple[str, ...]
    confidence: int
    reason: str
    stratum: str
    weight: float
    split: str

    @property
    def safety(self) -> set[str]:
        return {c for c in self.labels if c not in (BENIGN, UNINTERPRETABLE)}


@dataclass(frozen=True)
class ReaderAgreement:
    """Two readers on the features both read (primary-label agreement and Cohen's kappa); a
    set made before kappa was recorded has None there."""

    agree: int
    compared: int
    kappa: float | None = None
    kappa_safety: float | None = None
    adjudicated: int | None = None

    def line(self) -> str:
        if not self.compared:
            return "none"
        kappa = "" if self.kappa is None else f", kappa {self.kappa:.2f}"
        safety = "" if self.kappa_safety is None else f" (safety-vs-not {self.kappa_safety:.2f})"
        third = "" if self.adjudicated is None else f", {self.adjudicated} adjudicated"
        return (
            f"{self.agree / self.compared:.3f} of {self.compared} read twice{kappa}{safety}{third}"
        )


@dataclass(frozen=True)
class ReferenceSet:
    """The labels file with the SAE it was made for."""

    sae_id: str
    sae_sha256: str
    labels: dict[int, ReferenceLabel] = field(default_factory=dict)
    reader_agreement: ReaderAgreement | None = None
    """The two readers on the double-read features."""

    def half(self, split: str) -> list[ReferenceLabel]:
        return [r for r in self.labels.values() if r.split == split]


def assign_splits(features: Iterable[int]) -> dict[int, str]:
    """The seeded dev/test halves (fixed once: SPLIT_SEED)."""
    ordered = sorted(features)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ordered))
    return {
        ordered[i]: ("dev" if rank < (len(ordered) + 1) // 2 else "test")
        for rank, i in enumerate(order)
    }


def load(path: Path, label_values: Iterable[str]) -> ReferenceSet:
    """Read bench/reference/<sae>.json; unknown labels or confidences are one-line errors."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SafesailError(f"cannot read the reference set {path} ({exc}) — rebuild it with `safesail reference assemble`") from None
    allowed = set(label_values)
    labels = {}
    for row in data["features"]:
        bad = [c for c in row["labels"] if c not in allowed]
        if bad or not row["labels"] or not 1 <= int(row["confidence"]) <= 5:
            raise SafesailError(
                f"{path}: feature {row['feature']} has labels {row['labels']} / confidence "
                f"{row['confidence']} — labels must be taxonomy values, confidence 1-5; fix that row"
            )
        labels[int(row["feature"])] = ReferenceLabel(
            int(row["feature"]),
            tuple(row["labels"]),
            int(row["confidence"]),
            row["reason"],
            row["stratum"],
            float(row["weight"]),
            row["split"],
        )
    pair = data.get("reader_agreement")
    return ReferenceSet(
        data["sae_id"], data["sae_sha256"], labels, ReaderAgreement(**pair) if pair else None
    )


def agrees(answer: Sequence[str], reference: ReferenceLabel) -> bool:
    """An answer agrees with a reference label when its primary label is one of the reader's
    (not safety-related and not interpretable are values of their own): the rule two readers
    are held to between themselves, so no part is judged more leniently than a reader."""
    return bool(answer) and answer[0] in reference.labels


def weighted_precision_recall(
    flagged: dict[int, bool], reference: list[ReferenceLabel]
) -> tuple[float, float, int, int]:
    """(precision, recall, flagged, positives) of "flagged as a safety feature" against the
    reference's safety features, each feature weighted by its stratum's inverse inclusion
    probability so the figures estimate the whole SAE, not the candidate-heavy sample."""
    tp = fp = fn = 0.0
    n_flagged = n_pos = 0
    for r in reference:
        is_safety, is_flagged = bool(r.safety), flagged.get(r.feature, False)
        n_flagged += is_flagged
        n_pos += is_safety
        tp += r.weight * (is_safety and is_flagged)
        fp += r.weight * (is_flagged and not is_safety)
        fn += r.weight * (is_safety and not is_flagged)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, n_flagged, n_pos
