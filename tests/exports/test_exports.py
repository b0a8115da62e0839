"""Gold-set exports and imports: round trips per format, the Safe-SAIL importer, the CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete
from sqlmodel import Session, select

from exports.api import import_file, read_export, write_export
from exports.formats import FORMATS, one_per_feature
from exports.gather import gather_records
from exports.provenance import PROVENANCE
from exports.synthetic import PROJECT, populate
from safesail.cli.main import main
from safesail.db.tables import Explanation, Score, session_scope
from tests.conftest import copy_workspace


@pytest.fixture(scope="module")
def labeled_ws(triaged_ws, tmp_path_factory, lm):
    """A triaged copy with human labels (tasks, annotations), auto labels (scores, LLM calls)
    of every status and room summaries."""
    ws = copy_workspace(triaged_ws, tmp_path_factory.mktemp("labeled") / "ws", lm)
    populate(ws.engine, ws.selected_sae, ws.taxonomy.safety_concepts(), features=list(range(30)))
    return ws


@pytest.fixture(scope="module")
def blank_ws(triaged_ws, tmp_path_factory, lm):
    """A triaged copy with no explanations, to import into."""
    return copy_workspace(triaged_ws, tmp_path_factory.mktemp("blank") / "ws", lm)


def _clear(ws) -> None:
    with session_scope(ws.engine) as session:
        session.execute(delete(Score))
        session.execute(delete(Explanation))


def _project(records, fields):
    return sorted(tuple(json.dumps(getattr(r, f), sort_keys=True) for f in fields) for r in records)


def test_gold_set_has_provenance(labeled_ws):
    gold = gather_records(labeled_ws.engine)
    everything = gather_records(labeled_ws.engine, include_unaccepted=True)
    assert gold and len(everything) > len(gold)
    assert {r.status for r in gold} == {"accepted"}
    assert {r.status for r in everything} >= {"accepted", "queued", "rejected", "failed"}
    human = [r for r in gold if r.source == "human"]
    auto = [r for r in gold if r.source == "auto"]
    assert human and auto
    sae = next(s for s in labeled_ws.saes() if s.id == labeled_ws.selected_sae)
    for r in human:
        assert r.ls_project == PROJECT and r.ls_task_id is not None
        assert len(r.ls_annotation_ids) == 2 and r.annotators == ["alice", "bob"]
        assert r.agreement in (0.5, 1.0) and r.kappa is not None
        assert (r.layer, r.d_sae, r.model) == (sae.layer, sae.d_sae, labeled_ws.model_name)
    for r in auto:
        # the stage's confidence is `probability`, its guarantee `bound`; `agreement` is
        # annotators'
        assert r.probability is not None and r.agreement is None
        assert r.stage == "llm" and r.bound == 0.91
        assert {s["scorer"] for s in r.scores} == {
            "detection",
            "simulation",
        }


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip(fmt, labeled_ws, blank_ws, tmp_path):
    records = gather_records(labeled_ws.engine, include_unaccepted=True)
    write_export(records, fmt, tmp_path / fmt)
    _clear(blank_ws)
    report = import_file(blank_ws, fmt, tmp_path / fmt, trust=True)  # our own export
    one_each = fmt in ("delphi", "safesail-db")
    expected = one_per_feature(records) if one_each else records
    assert report.skipped == [] and report.added == len(expected)
    back = gather_records(blank_ws.engine, include_unaccepted=True, include_priors=True)
    origin = {(r.details or {}).pop(PROVENANCE)["file"] for r in back}
    assert origin == {str((tmp_path / fmt).resolve())}  # a trusted import says where from
    for r in back:
        r.details = r.details or None
    keeps = FORMATS[fmt].keeps
    assert _project(back, keeps) == _project(expected, keeps)
    if fmt in ("jsonl", "parquet", "csv"):
        assert back == records  # lossless, provenance and Label Studio ids included
    again = import_file(blank_ws, fmt, tmp_path / fmt, trust=True)
    assert (again.added, again.present) == (0, report.added)


def test_export_cli_manifest_and_rerun(labeled_ws, tmp_path):
    out = tmp_path / "out"
    args = ["export", "--workspace", str(labeled_ws.config.workspace), "--quiet"]
    assert main([*args, "--format", "parquet", "--out", str(out)]) == 0
    manifest = json.loads((out / "parquet.manifest.json").read_text())
    n_gold = len(gather_records(labeled_ws.engine))
    assert manifest["records"] == n_gold and manifest["by_status"] == {"accepted": n_gold}
    assert manifest["model"] == labeled_ws.model_name
    assert manifest["saes"][0]["id"] == labeled_ws.selected_sae
    assert main([*args, "--format", "parquet", "--out", str(out), "--include-unaccepted"]) == 0
    records, _ = read_export("parquet", out)
    assert len(records) > n_gold and not list(out.glob(".parquet-*"))  # no staging left
    with pytest.raises(SystemExit):
        main([*args, "--format", "nope", "--out", str(out)])


SAFE_SAIL_DB = {
    "{L}_3": {
        "explanation": "violent threats",
        "correlation_score": 0.41,
        "tag_list": ["violence"],
    },
    "{L}_4": {
        "explanation": "explicit content",
        "correlation_score": 0.38,
        "tag_list": ["pornography", "violence"],
    },
    "{L}_5": {"explanation": "***", "correlation_score": 0.5, "tag_list": ["politics"]},
    "{L}_6": {"explanation": "*****", "correlation_score": 0.2, "tag_list": ["terror"]},
    "{L}_7": {"explanation": "elections", "correlation_score": 0.7, "tag_list": ["politics"]},
    "{L}_8": {"explanation": "attacks", "correlation_score": "high", "tag_list": ["terror"]},
    "{L}_9": ["not", "an", "object"],
    "{L}_10": {"explanation": "odd tag", "correlation_score": 0.3, "tag_list": ["astrology"]},
    "{L}_99999": {"explanation": "too far", "correlation_score": 0.3, "tag_list": ["terror"]},
    "{O}_3": {"explanation": "other layer", "correlation_score": 0.3, "tag_list": ["terror"]},
    "layer3-neuron4": {"explanation": "bad key", "correlation_score": 0.3, "tag_list": []},
    "{L}_11": {"explanation": None, "correlation_score": 0.3, "tag_list": ["terror"]},
}
QWEN = "Qwen/Qwen2.5-3B-Instruct"


def _db_file(tmp_path, layer: int):
    raw = json.dumps(SAFE_SAIL_DB).replace("{L}", str(layer)).replace("{O}", str(layer + 5))
    path = tmp_path / "neuron_db.json"
    path.write_text(raw)
    return path


def test_safesail_db_import_registers_its_own_sae(blank_ws, tmp_path):
    """A released DB explains Safe-SAIL's Qwen2.5-3B-Instruct SAEs: it is attached to those,
    registered by identity (no weights), never to the selected SAE of another model."""
    _clear(blank_ws)
    sae = next(s for s in blank_ws.saes() if s.id == blank_ws.selected_sae)
    L = sae.layer
    path = _db_file(tmp_path, L)
    report = import_file(blank_ws, "safesail-db", path)
    ids = {L: f"safe-sail-qwen2.5-3b-instruct-L{L}-w20480"}
    ids[L + 5] = f"safe-sail-qwen2.5-3b-instruct-L{L + 5}-w20480"
    why = {where: reason for where, reason in report.skipped}
    assert why[f"{L}_11"] == "null explanation" and why[f"{L}_9"].startswith("bad row")
    assert why[f"{L}_5"].startswith("masked") and "not a number" in why[f"{L}_8"]
    assert "unknown concept" in why[f"{ids[L]}/10"]
    assert "out of range (d_sae=20480)" in why[f"{ids[L]}/99999"]
    assert report.added == 4 and len(report.skipped) == 8  # {O}_3 is its own layer's SAE now
    with Session(blank_ws.engine) as session:
        rows = session.exec(select(Explanation)).all()
        assert {(e.sae_id, e.feature) for e in rows} == {
            (ids[L], 3), (ids[L], 4), (ids[L], 7), (ids[L + 5], 3)
        }  # fmt: skip
        assert all(e.sae_id != sae.id for e in rows)  # nothing on the SmolLM2 SAE
    registered = {s.id: s for s in blank_ws.saes() if s.id in ids.values()}
    ref = registered[ids[L]]
    assert (ref.source, ref.path, ref.model, ref.layer) == ("reference-only", "", QWEN, L)
    assert (ref.d_sae, ref.d_in, ref.k, ref.hook) == (20480, 2048, 200, f"blocks.{L}.hook_mlp_out")
    assert blank_ws.selected_sae == sae.id  # the selection is untouched
    priors = gather_records(blank_ws.engine, include_priors=True)
    assert {(r.sae_id, r.model) for r in priors} == {(i, QWEN) for i in ids.values()}
    # the CLI reports the same and adds nothing twice
    code = main(["import", "safesail-db", str(path), "--workspace", str(blank_ws.config.workspace)])
    assert code == 0 and len(gather_records(blank_ws.engine, include_priors=True)) == 4
    assert blank_ws.status()["labels"]["prior"] == 0  # the selected SAE's count: none on it


def test_safesail_db_refuses_another_models_sae(blank_ws, tmp_path, capsys):
    _clear(blank_ws)
    sae = next(s for s in blank_ws.saes() if s.id == blank_ws.selected_sae)
    path = _db_file(tmp_path, sae.layer)
    ws = str(blank_ws.config.workspace)
    assert main(["import", "safesail-db", str(path), "--workspace", ws, "--sae", sae.id]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"SAE {sae.id} belongs to" in err and QWEN in err
    with Session(blank_ws.engine) as session:
        assert session.exec(select(Explanation)).all() == []


def test_safesail_db_import_onto_this_models_sae(blank_ws, tmp_path):
    """A DB declared as written for this workspace's model attaches to the SAE named."""
    _clear(blank_ws)
    sae = next(s for s in blank_ws.saes() if s.id == blank_ws.selected_sae)
    path = _db_file(tmp_path, sae.layer)
    report = import_file(blank_ws, "safesail-db", path, sae_id=sae.id, db_model=blank_ws.model_name)
    assert report.added == 3 and report.present == 0
    why = {where: reason for where, reason in report.skipped}
    L = sae.layer
    assert why[f"{L}_5"].startswith("masked") and why[f"{L}_6"].startswith("masked")
    assert "not a number" in why[f"{L}_8"] and why[f"{L}_9"].startswith("bad row")
    assert why[f"{L}_11"] == "null explanation"
    assert "unknown concept" in why[f"{sae.id}/10"] and "out of range" in why[f"{sae.id}/99999"]
    assert "does not match" in why[f"{L + 5}_3"] and "<layer>_<index>" in why["layer3-neuron4"]
    assert len(report.skipped) == 9
    with Session(blank_ws.engine) as session:
        rows = {e.feature: e for e in session.exec(select(Explanation))}
        assert {e.source for e in rows.values()} == {"prior"}
        assert {e.sae_id for e in rows.values()} == {sae.id}
        assert rows[4].concepts == ["sexual_content", "violence"]
        score = session.exec(select(Score).where(Score.explanation_id == rows[7].id)).one()
        assert score.value == 0.7
    again = import_file(blank_ws, "safesail-db", path, sae_id=sae.id, db_model=blank_ws.model_name)
    assert (again.added, again.present) == (0, 3)


def test_safesail_db_on_an_empty_workspace(tmp_path, lm):
    """No corpus, no SAE: the DB comes in on its own SAE, browsable and exportable."""
    from app import browse
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "empty", lm)
    path = _db_file(tmp_path, 8)
    report = import_file(ws, "safesail-db", path)
    assert report.added == 4 and ws.selected_sae is None
    land = browse.landscape(ws.engine)
    assert "safe-sail-qwen2.5-3b-instruct-L8-w20480" in set(land["sae"])
    out = tmp_path / "out"
    args = ["export", "--workspace", str(ws.config.workspace), "--quiet", "--include-priors"]
    assert main([*args, "--format", "jsonl", "--out", str(out)]) == 0
    records, _ = read_export("jsonl", out)
    assert len(records) == 4 and {r.model for r in records} == {QWEN}
    assert {(r.layer, r.d_sae) for r in records} == {(8, 20480), (13, 20480)}


def test_import_errors(blank_ws, tmp_path, capsys):
    ws = str(blank_ws.config.workspace)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["import", "safesail-db", str(bad), "--workspace", ws]) == 2
    assert main(["import", "safesail-db", str(bad), "--workspace", ws, "--sae", "nope"]) == 2
    assert main(["import", "jsonl", str(tmp_path / "missing"), "--workspace", ws]) == 2
    err = capsys.readouterr().err
    assert "not a Safe-SAIL neuron DB" in err and "unknown SAE 'nope'" in err
    assert "no such file" in err


def test_demo_step_writes_gold(labeled_ws):
    from exports.plugin import PLUGIN

    assert PLUGIN.demo(labeled_ws, None, False) == 0
    records, _ = read_export("jsonl", labeled_ws.config.workspace / "exports" / "jsonl")
    assert records == gather_records(labeled_ws.engine)
    db = labeled_ws.config.workspace / "exports" / "safesail-db" / f"{labeled_ws.selected_sae}.json"
    assert len(json.loads(db.read_text())) == len({(r.sae_id, r.index) for r in records})


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_crafted_import_lands_as_prior_unless_trusted(fmt, blank_ws, tmp_path):
    """A file's source and status are claims: without --trust a crafted "human, accepted" row
    becomes a prior (outside the gold set, below every label); with it, the row keeps its source
    and records the file and the time it came from."""
    from exports.records import ExportRecord
    from safesail.db.queries import best_accepted

    _clear(blank_ws)
    concept = blank_ws.taxonomy.safety_concepts()[0]
    crafted = ExportRecord(
        sae_id=blank_ws.selected_sae,
        index=0,
        explanation="planted gold",
        concepts=[concept],
        source="human",
        status="accepted",
        author="mallory",
    )
    write_export([crafted], fmt, tmp_path / fmt)
    data = next(p for p in (tmp_path / fmt).iterdir() if p.name.startswith("explanations"))
    ws = str(blank_ws.config.workspace)
    assert main(["import", fmt, str(data), "--workspace", ws, "--quiet"]) == 0
    assert gather_records(blank_ws.engine) == []  # nothing became gold
    with Session(blank_ws.engine) as session:
        (row,) = session.exec(select(Explanation)).all()
        assert (row.source, row.status) == ("prior", "accepted")
        provenance = row.details[PROVENANCE]
        assert provenance["trusted"] is False and provenance["claimed_source"] == "human"
        assert provenance["file"] == str(data.resolve()) and provenance["imported_at"]
    assert main(["import", fmt, str(data), "--workspace", ws, "--quiet", "--trust"]) == 0
    (gold,) = gather_records(blank_ws.engine)
    assert gold.source == "human" and gold.details[PROVENANCE]["trusted"] is True
    assert gold.details[PROVENANCE]["file"] == str(data.resolve())
    with Session(blank_ws.engine) as session:
        assert best_accepted(session, blank_ws.selected_sae)[0].source == "human"
