"""The readers' labels joined into the reference set file (`safesail reference assemble`): a
first reading of every sampled feature, a second reader on some, a third where those two split,
and the two readers' agreement, the ceiling a simulated expert can be held to."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from safesail.errors import SafesailError
from safesail.stats import cohen_kappa
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


def _read_labels(label_files: Iterable[Path]) -> dict[int, dict]:
    labels: dict[int, dict] = {}
    for path in label_files:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            feature = int(row["feature"])
            if feature in labels:
                raise SafesailError(f"{path}:{n}: feature {feature} is labeled twice — keep one of its lines")
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
        raise SafesailError(f"{len(missing)} sampled features have no label, e.g. {missing[:5]} — add their labels to the "
            "--labels files and rerun")
    if extra := sorted((set(labels) | set(second) | set(third)) - sampled):
        raise SafesailError(f"labels for features not in the sample: {extra[:5]} — drop those lines, or give the "
            "--sample they were read from")
    split = {f: r for f, r in second.items() if r["labels"][0] not in labels[f]["labels"]}
    if undecided := sorted(set(split) - set(third)):
        raise SafesailError(
            f"{len(undecided)} double-read features disagree and have no adjudication, "
            f"e.g. {undecided[:5]} — add a third reading of each "
            "with --adjudication"
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
