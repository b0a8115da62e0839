"""The reference set's machinery: a blind view that shows what an annotator sees and nothing the
system computes, a stratified sample whose weights add up to the SAE, fixed dev/test halves,
weighted precision/recall, and a labels file refused for other SAE weights."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from safesail.db.tables import Feature
from safesail.errors import SafesailError
from safesail.reference.check import open_reference
from safesail.reference.labels import (
    ReferenceLabel,
    agrees,
    assign_splits,
    weighted_precision_recall,
)
from safesail.reference.sample import blind_view, dump, sample
from tests.conftest import copy_workspace


def test_blind_view_marks_activating_tokens_and_hides_tags_and_triage(triaged_ws):
    with Session(triaged_ws.engine) as session:
        row = session.exec(
            select(Feature).where(Feature.sae_id == triaged_ws.selected_sae, Feature.candidate)
        ).first()
        view = blind_view(session, row)
    assert view.startswith(f"## feature {row.index}\nfires on ")
    assert "«" in view and ":9»" in view  # the peak token is marked at the top level
    for hidden in (row.concept, "candidate", "precision", "violence", "cybercrime", "benign"):
        assert hidden not in view


def test_sample_is_stratified_seeded_and_its_weights_add_up_to_the_sae(triaged_ws):
    sae = triaged_ws.selected_sae
    drawn = sample(triaged_ws.engine, sae, n=20, seed=0)
    with Session(triaged_ws.engine) as session:
        live = session.exec(
            select(Feature.index, Feature.candidate, Feature.concept).where(
                Feature.sae_id == sae, Feature.examples.is_not(None)
            )
        ).all()
    assert len(drawn) == min(20, len(live)) and len({s.feature for s in drawn}) == len(drawn)
    by_stratum: dict[str, list] = {}
    for s in drawn:
        by_stratum.setdefault(s.stratum, []).append(s)
    # each stratum's weight is its size over its draws: the weights sum to the live features
    assert sum(s.weight for s in drawn) == pytest.approx(len(live))
    concepts = {r.concept for r in live if r.candidate}
    assert {f"candidate:{c}" for c in concepts} <= set(by_stratum)
    assert [s.feature for s in sample(triaged_ws.engine, sae, n=20, seed=0)] == [
        s.feature for s in drawn
    ]
    assert [s.feature for s in sample(triaged_ws.engine, sae, n=20, seed=1)] != [
        s.feature for s in drawn
    ]


def test_splits_are_halves_fixed_by_the_feature_set_not_its_order():
    splits = assign_splits(range(100))
    assert sum(v == "dev" for v in splits.values()) == 50
    assert assign_splits(reversed(range(100))) == splits


def _label(feature: int, labels: tuple[str, ...], weight: float = 1.0) -> ReferenceLabel:
    return ReferenceLabel(feature, labels, 4, "why", "s", weight, "test")


def test_weighted_precision_recall_known_answer():
    refs = [
        _label(1, ("violence",), 1.0),  # flagged, safety: tp 1
        _label(2, ("benign",), 3.0),  # flagged, not safety: fp 3
        _label(3, ("terror",), 2.0),  # missed safety: fn 2
        _label(4, ("uninterpretable",), 5.0),  # neither
    ]
    precision, recall, n_flagged, n_pos = weighted_precision_recall({1: True, 2: True}, refs)
    assert (precision, recall, n_flagged, n_pos) == (0.25, pytest.approx(1 / 3), 2, 2)
    assert agrees(["violence", "weapons"], refs[0]) and not agrees(["benign"], refs[0])


def test_a_reference_file_is_refused_for_other_weights(triaged_ws, tmp_path, lm):
    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    out = tmp_path / "blind"
    n = dump(ws.engine, ws.selected_sae, out, n=6, seed=0)
    assert n == 6 and (out / "view-01.txt").read_text().count("## feature ") == 6
    manifest = json.loads((out / "sample.json").read_text())
    for row in manifest["features"]:
        row.update(labels=["benign"], confidence=3, reason="reads as benign")
    good = tmp_path / "ref.json"
    good.write_text(json.dumps(manifest))
    assert len(open_reference(ws, good).labels) == 6
    manifest["sae_sha256"] = "0" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest))
    with pytest.raises(SafesailError, match="labeled on SAE weights 000000000000, which no SAE"):
        open_reference(ws, bad)
    manifest["features"][0]["labels"] = ["violent"]
    bad.write_text(json.dumps(manifest))
    with pytest.raises(SafesailError, match="labels must be taxonomy values"):
        open_reference(ws, bad)


def test_sae_training_is_deterministic(tmp_path, lm):
    """Two fresh workspaces train bit-identical weights from the same corpus and spec: what
    lets a reference set's sha256 find its SAE again on this machine."""
    from safesail.reference.labels import sae_sha256
    from tests.conftest import TINY_SPECS, TINY_TRAIN, make_workspace, tiny_records

    digests = []
    for name in ("a", "b"):
        ws = make_workspace(tmp_path / name, lm)
        ws.add_corpus(tiny_records())
        ws.train_saes(TINY_SPECS[:1], TINY_TRAIN, max_tokens=24)
        digests.append(sae_sha256(ws.engine, TINY_SPECS[0].sae_id))
    assert digests[0] == digests[1]


def test_assemble_joins_labels_and_refuses_gaps_and_doubles(tmp_path):
    from safesail.reference.readings import assemble

    sample = tmp_path / "sample.json"
    rows = [{"feature": f, "stratum": "s", "weight": 2.0, "split": "dev"} for f in (1, 2, 3)]
    sample.write_text(json.dumps({"sae_id": "x", "sae_sha256": "0" * 64, "features": rows}))

    def lines(path, items):
        path.write_text(
            "".join(
                json.dumps({"feature": f, "labels": ls, "confidence": 3, "reason": "r"}) + "\n"
                for f, ls in items
            )
        )
        return path

    a = lines(tmp_path / "a.jsonl", [(1, ["violence"]), (2, ["benign"])])
    b = lines(tmp_path / "b.jsonl", [(3, ["terror", "weapons"])])
    second = lines(tmp_path / "o.jsonl", [(1, ["violence"]), (3, ["benign"])])
    out = tmp_path / "ref.json"
    with pytest.raises(SafesailError, match="1 double-read features disagree and have no adj"):
        assemble(sample, [a, b], out, [second])  # feature 3: terror/weapons against benign
    third = lines(tmp_path / "t.jsonl", [(3, ["weapons"])])
    assert assemble(sample, [a, b], out, [second], [third]) == 3
    data = json.loads(out.read_text())
    assert [r["labels"] for r in data["features"]] == [["violence"], ["benign"], ["weapons"]]
    assert [len(r["readings"]) for r in data["features"]] == [2, 1, 3]
    assert [r["adjudicated"] for r in data["features"]] == [False, False, True]
    assert data["features"][2]["readings"][1]["labels"] == ["benign"]  # both answers are kept
    agreement = data["reader_agreement"]
    assert (agreement["agree"], agreement["compared"], agreement["adjudicated"]) == (1, 2, 1)
    # violence/violence and terror/benign: observed 1/2, chance 1/4 from the marginals, so
    # kappa 1/3; safety-vs-not (safety twice against safety and not): no better than chance
    assert agreement["kappa"] == pytest.approx(1 / 3, abs=1e-3) and agreement["kappa_safety"] == 0.0
    with pytest.raises(SafesailError, match="1 sampled features have no label"):
        assemble(sample, [a], out)
    with pytest.raises(SafesailError, match="feature 1 is labeled twice"):
        assemble(sample, [a, b, lines(tmp_path / "c.jsonl", [(1, ["benign"])])], out)
