"""The reference sample and what its readers read: a seeded, stratified sample of the SAE's
features and each one's blind view, written out by `safesail reference dump`.

- `sample`: candidates of every concept, near misses, other live features (rare, dense and the
  middle), each with its stratum's inclusion weight, so precision and recall on the sample
  estimate the SAE's.
- `blind_view`: the text a labeler reads (what an annotator sees in Label Studio: firing rate,
  the top and low-activation windows with the activating tokens marked); nothing in it comes
  from tags, triage or the oracle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.tables import Context, Feature
from safesail.errors import SafesailError
from safesail.features.examples import TOP, feature_examples, peak_window
from safesail.reference.labels import SPLIT_SEED, assign_splits, sae_sha256
from safesail.triage.text import TEXT_LEVEL, reason_kind

N_TOP = 5
"""Top-activating contexts shown per feature (as in the Label Studio task)."""

N_LOW = 3
"""Low-activation contexts (deciles 1..3) shown for contrast."""

WINDOW = (24, 8)
"""Tokens kept before and after a context's peak (Safe-SAIL shows segments, not whole texts)."""


def window(acts: list[float] | np.ndarray, length: int) -> tuple[int, int]:
    """[lo, hi) of the segment shown around a context's peak activation (`WINDOW`)."""
    return peak_window(acts, length, *WINDOW)


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
        raise SafesailError(f"SAE {sae_id} has no features with examples — run `safesail collect`")
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
