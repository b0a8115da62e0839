"""The reference set: features labeled by people *reading* them, the yardstick for the simulated
expert, triage and the explainer (bench/reference/).

Every figure the system reported before was measured against a label derived from corpus tags,
the same tags its parts use, so it measured the simulation against itself. A reference label is
made from the blind view alone (what an annotator sees in Label Studio: firing rate, the top and
low-activation windows with the activating tokens marked), with the rubric in
bench/reference/RUBRIC.md, and is bound to the exact SAE weights by their sha256.

- `sample`: a seeded, stratified sample (candidates of every concept, other live features,
  rare and dense ones), each with its stratum's inclusion weight, so precision and recall on
  the sample estimate the SAE's.
- `blind_view`: the text a labeler reads; nothing in it comes from tags, triage or the oracle.
- `load` / `split`: the labels file and its seeded dev/test halves (test only for final figures).
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
from sqlmodel import Session, select

from safesail.db.queries import LIST_SAES
from safesail.db.tables import Context, Feature, SaeRecord
from safesail.errors import SafesailError
from safesail.features.examples import TOP, feature_examples, peak_window
from safesail.stats import cohen_kappa
from safesail.taxonomy import BENIGN, UNINTERPRETABLE
from safesail.triage.text import TEXT_LEVEL, reason_kind

N_TOP = 5
"""Top-activating contexts shown per feature (as in the Label Studio task)."""
N_LOW = 3
"""Low-activation contexts (deciles 1..3) shown for contrast."""
WINDOW = (24, 8)
"""Tokens kept before and after a context's peak (Safe-SAIL shows segments, not whole texts)."""

SPLIT_SEED = 20261201
"""Fixed before any label was read: the dev/test split never changes."""


def window(acts: list[float] | np.ndarray, length: int) -> tuple[int, int]:
    """[lo, hi) of the segment shown around a context's peak activation (`WINDOW`)."""
    return peak_window(acts, length, *WINDOW)


def sae_sha256(engine: Engine, sae_id: str) -> str:
    """sha256 of the SAE's weights file: a reference label belongs to exactly these weights."""
    with Session(engine) as session:
        record = session.get(SaeRecord, sae_id)
    if record is None:
        raise SafesailError(f"unknown SAE '{sae_id}' — {LIST_SAES}")
    weights = Path(record.path) / "sae_weights.safetensors"
    if not weights.exists():
        raise SafesailError(f"SAE {sae_id} has no weights file at {weights}")
    stat = weights.stat()
    return _file_sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so `status --json` (which the app polls) does not re-read
    the weights every time, yet a rewritten file is hashed again."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _marked(tokens: list[str], acts: np.ndarray, scale: float) -> str:
    """The segment with each activating token as «token:level», level 1-9 of the feature's max."""
    lo, hi = window(acts, len(tokens))
    parts = ["…"] if lo > 0 else []
    for token, act in zip(tokens[lo:hi], acts[lo:hi], strict=True):
        text = token.replace("\n", "\\n")
        level = int(np.clip(np.ceil(9 * act / scale), 1, 9)) if act > 0 and scale > 0 else 0
        parts.append(f"«{text}:{level}»" if level else text)
    if hi < len(tokens):
        parts.append("…")
    return "".join(parts)


def blind_view(session: Session, feature: Feature) -> str:
    """What an annotator sees of a feature, as plain text: no tags, no triage, no oracle."""
    examples = feature_examples(feature)
    top = [e for e in examples if e.kind == TOP][:N_TOP]
    low = [e for e in examples if 1 <= e.kind <= 3][:N_LOW]
    ids = [e.text_id for e in top + low]
    tokens = {
        c.text_id: c.tokens for c in session.exec(select(Context).where(Context.text_id.in_(ids)))
    }
    scale = feature.max_act or 1.0
    lines = [
        f"## feature {feature.index}",
        f"fires on {feature.firing_rate:.3%} of tokens; max activation {feature.max_act:.2f}; "
        f"median when firing {feature.quantiles.get('0.5', 0.0):.2f}",
        "top-activating contexts:",
    ]
    lines += [
        f"  {e.max_act:6.2f}  {_marked(tokens[e.text_id], e.activations, scale)}" for e in top
    ]
    if low:
        lines.append("low-activation contexts (for contrast):")
        lines += [
            f"  {e.max_act:6.2f}  {_marked(tokens[e.text_id], e.activations, scale)}" for e in low
        ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Sampled:
    """One feature of the reference sample and the share of its stratum that was drawn."""

    feature: int
    stratum: str
    weight: float
    """Stratum size / features drawn from it: the inverse inclusion probability."""


NEAR_TOP = 0.15
"""Near misses are the features triage came close on and said no to: every token-level
rejection (the texts passed, the marked tokens did not) and this top share of the text-level
rejections by AUROC for their closest concept; drawn per rejection kind, so every kind of "no"
is judged."""


def sample(
    engine: Engine,
    sae_id: str,
    n: int = 240,
    seed: int = 0,
    candidate_share: float = 0.5,
    near_share: float = 0.0,
) -> list[Sampled]:
    """A stratified sample of the SAE's live features (with examples): about `candidate_share`
    of it safety candidates spread over their concepts (every concept gets some), about
    `near_share` near misses (see NEAR_TOP; per rejection kind, every kind gets some), the rest
    other features split into rare (bottom quarter by firing rate), dense (top tenth) and the
    middle. Strata are defined before anyone reads a feature; the order is shuffled."""
    with Session(engine) as session:
        rows = session.exec(
            select(
                Feature.index,
                Feature.candidate,
                Feature.concept,
                Feature.firing_rate,
                Feature.auroc,
                Feature.triage_reason,
            ).where(Feature.sae_id == sae_id, Feature.examples.is_not(None))
        ).all()
    if not rows:
        raise SafesailError(f"SAE {sae_id} has no features with examples; run `safesail collect`")
    strata: dict[str, list[int]] = {}
    for r in rows:
        if r.candidate:
            strata.setdefault(f"candidate:{r.concept}", []).append(r.index)
    rejected = [r for r in rows if not r.candidate]
    kinds = {r.index: reason_kind(r.triage_reason or TEXT_LEVEL) for r in rejected}
    text_level = sorted(
        (r for r in rejected if kinds[r.index] == TEXT_LEVEL),
        key=lambda r: (-(r.auroc or 0.0), r.index),
    )
    near = [r for r in rejected if kinds[r.index] != TEXT_LEVEL]
    near += text_level[: int(len(text_level) * NEAR_TOP)]
    for r in near if near_share > 0 else []:
        strata.setdefault(f"near:{kinds[r.index]}", []).append(r.index)
    near_ids = {r.index for r in near} if near_share > 0 else set()
    others = sorted(
        (r for r in rejected if r.index not in near_ids), key=lambda r: (r.firing_rate, r.index)
    )
    q1, q9 = int(len(others) * 0.25), int(len(others) * 0.9)
    strata["other:rare"] = [r.index for r in others[:q1]]
    strata["other:middle"] = [r.index for r in others[q1:q9]]
    strata["other:dense"] = [r.index for r in others[q9:]]
    quotas: dict[str, int] = {}
    for prefix, share in (("candidate:", candidate_share), ("near:", near_share)):
        sizes = {k: len(v) for k, v in strata.items() if k.startswith(prefix)}
        quotas |= _allocate(sizes, int(round(n * share)), floor=3)
    quotas |= _allocate(
        {k: len(v) for k, v in strata.items() if k.startswith("other:")},
        n - sum(quotas.values()),
        floor=0,
        shares={"other:rare": 0.25, "other:middle": 0.5, "other:dense": 0.25},
    )
    rng = np.random.default_rng(seed)
    out = []
    for name in sorted(strata):
        members, take = sorted(strata[name]), quotas.get(name, 0)
        if not take:
            continue
        drawn = rng.choice(members, size=take, replace=False)
        out += [Sampled(int(f), name, len(members) / take) for f in drawn]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _allocate(
    sizes: dict[str, int], total: int, floor: int, shares: dict[str, float] | None = None
) -> dict[str, int]:
    """Split `total` draws over strata: at least `floor` each (or all it has), the rest by
    `shares` (default: proportional to size), never more than a stratum holds."""
    quotas = {k: min(floor, size) for k, size in sizes.items()}
    weights = shares or {k: float(size) for k, size in sizes.items()}
    while sum(quotas.values()) < total:
        open_ = {k: weights.get(k, 0.0) for k in sizes if quotas[k] < sizes[k]}
        if not open_ or not sum(open_.values()):
            break
        # the stratum furthest below its share of what is drawn so far gets the next draw
        drawn = sum(quotas.values()) + 1
        norm = sum(open_.values())
        best = max(open_, key=lambda k: (open_[k] / norm) * drawn - quotas[k])
        quotas[best] += 1
    return quotas


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
        raise SafesailError(f"cannot read the reference set {path}: {exc}") from None
    allowed = set(label_values)
    labels = {}
    for row in data["features"]:
        bad = [c for c in row["labels"] if c not in allowed]
        if bad or not row["labels"] or not 1 <= int(row["confidence"]) <= 5:
            raise SafesailError(
                f"{path}: feature {row['feature']} has labels {row['labels']} / confidence "
                f"{row['confidence']}: labels must be taxonomy values, confidence 1-5"
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


def dump(
    engine: Engine,
    sae_id: str,
    out: Path,
    n: int,
    seed: int,
    near_share: float = 0.0,
    candidate_share: float = 0.5,
    per_file: int = 60,
) -> int:
    """Write the blind views of a fresh sample to `out/view-NN.txt` (what labelers read) and
    the sample itself to `out/sample.json` (strata and weights: labelers must not read it, as
    the strata name triage's verdicts). Returns the number of features written."""
    drawn = sample(engine, sae_id, n, seed, candidate_share, near_share)
    with Session(engine) as session:
        rows = {
            f.index: f
            for f in session.exec(
                select(Feature).where(
                    Feature.sae_id == sae_id, Feature.index.in_([s.feature for s in drawn])
                )
            )
        }
        views = [blind_view(session, rows[s.feature]) for s in drawn]
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(views), per_file):
        part = views[start : start + per_file]
        (out / f"view-{start // per_file + 1:02d}.txt").write_text("\n\n".join(part) + "\n")
    splits = assign_splits(s.feature for s in drawn)
    manifest = {
        "sae_id": sae_id,
        "sae_sha256": sae_sha256(engine, sae_id),
        "sample_seed": seed,
        "candidate_share": candidate_share,
        "near_share": near_share,
        "split_seed": SPLIT_SEED,
        "features": [
            {
                "feature": s.feature,
                "stratum": s.stratum,
                "weight": s.weight,
                "split": splits[s.feature],
            }
            for s in drawn
        ],
    }
    (out / "sample.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return len(views)


def _read_labels(label_files: Iterable[Path]) -> dict[int, dict]:
    labels: dict[int, dict] = {}
    for path in label_files:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            feature = int(row["feature"])
            if feature in labels:
                raise SafesailError(f"{path}:{n}: feature {feature} is labeled twice")
            labels[feature] = row
    return labels


def _reading(row: dict) -> dict:
    return {
        "labeler": str(row.get("labeler", "")),
        "labels": list(row["labels"]),
        "confidence": int(row["confidence"]),
        "reason": str(row["reason"]),
    }


def assemble(
    sample_file: Path,
    label_files: Iterable[Path],
    out: Path,
    overlap: Iterable[Path] = (),
    adjudication: Iterable[Path] = (),
) -> int:
    """Join the sample (strata, weights, splits, sha256) with the readers' JSON-lines labels
    into the reference set file; a sampled feature without a label, a label for a feature not
    in the sample, or a feature labeled twice is a one-line error. `overlap` files hold a
    second reader's labels of some features: where the two disagree on the primary label, a
    third reading (`adjudication`) decides, and every feature keeps all its readings. The
    readers' agreement and kappa (overall and safety-vs-not) are stored: the ceiling a
    simulated expert can be held to."""
    manifest = json.loads(Path(sample_file).read_text())
    labels = _read_labels(label_files)
    second, third = _read_labels(overlap), _read_labels(adjudication)
    sampled = {int(f["feature"]) for f in manifest["features"]}
    if missing := sorted(sampled - set(labels)):
        raise SafesailError(f"{len(missing)} sampled features have no label, e.g. {missing[:5]}")
    if extra := sorted((set(labels) | set(second) | set(third)) - sampled):
        raise SafesailError(f"labels for features not in the sample: {extra[:5]}")
    split = {f: r for f, r in second.items() if r["labels"][0] not in labels[f]["labels"]}
    if undecided := sorted(set(split) - set(third)):
        raise SafesailError(
            f"{len(undecided)} double-read features disagree and have no adjudication, "
            f"e.g. {undecided[:5]}"
        )
    for row in manifest["features"]:
        feature = int(row["feature"])
        readings = [labels[feature]] + ([second[feature]] if feature in second else [])
        final = third[feature] if feature in split else labels[feature]
        if feature in split:
            readings.append(third[feature])
        row.update(
            labels=list(final["labels"]),
            confidence=int(final["confidence"]),
            reason=str(final["reason"]),
            labeler=str(final.get("labeler", "")),
            readings=[_reading(r) for r in readings],
            adjudicated=feature in split,
        )
    manifest["reader_agreement"] = reader_agreement(
        {f: list(r["labels"]) for f, r in labels.items()},
        {f: list(r["labels"]) for f, r in second.items()},
    ) | {"adjudicated": len(split)}
    Path(out).write_text(json.dumps(manifest, indent=1) + "\n")
    return len(manifest["features"])


def reader_agreement(
    first: dict[int, list[str]], second: dict[int, list[str]]
) -> dict[str, int | float | None]:
    """Two readers on the features both read: agreement on the primary label (the second's
    primary is one of the first's labels), Cohen's kappa on the primary label and on
    safety-vs-not. The ceiling any simulated expert can be held to."""
    both = sorted(set(first) & set(second))
    agree = [second[f][0] in first[f] for f in both]
    truth = [second[f][0] if ok else first[f][0] for f, ok in zip(both, agree, strict=True)]
    kappa = cohen_kappa(truth, [second[f][0] for f in both])
    is_safety = [
        ["safety" if set(labels[f]) - {BENIGN, UNINTERPRETABLE} else "not" for f in both]
        for labels in (first, second)
    ]
    kappa_safety = cohen_kappa(*is_safety)
    return {
        "agree": sum(agree),
        "compared": len(both),
        "kappa": None if kappa is None else round(kappa, 3),
        "kappa_safety": None if kappa_safety is None else round(kappa_safety, 3),
    }
