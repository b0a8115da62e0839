"""SAE selection with a known answer, bad inputs, and the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlmodel import Session, select

from safesail.cli.main import main
from safesail.db.tables import CorpusText, Feature
from safesail.errors import SafesailError
from safesail.features.examples import feature_examples
from safesail.selection.config import SelectionConfig
from safesail.workspace import Workspace
from tests.conftest import TINY_COLLECT, copy_workspace, make_workspace, tiny_records

LAYER = 2


def _save_topk_sae(
    path: Path, w_enc: torch.Tensor, b_enc: torch.Tensor, k: int, layer: int = LAYER
) -> Path:
    from sae_lens import TopKSAE, TopKSAEConfig

    sae = TopKSAE(
        TopKSAEConfig(d_in=w_enc.shape[0], d_sae=w_enc.shape[1], k=k, dtype="float32", device="cpu")
    )
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w_enc.T)
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    sae.save_model(path)
    # Layer-norm the input (sae-lens applies it at load): massive-norm tokens must not dominate.
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    return path


def _concept_direction(lm, records, concept: str) -> tuple[torch.Tensor, float]:
    """A detector: the unit direction from other tokens to concept tokens, and a threshold
    (99th percentile of other tokens on it) that the other texts rarely cross."""

    def resid(
        keep,
    ) -> torch.Tensor:  # layer-normed like the SAE's input: massive tokens don't dominate
        ids = lm.tokenize([r.text for r in records if keep(r)], TINY_COLLECT.max_tokens)
        x = lm.residuals(ids, [LAYER])[LAYER]
        x = x - x.mean(-1, keepdim=True)
        return x / (x.std(-1, keepdim=True) + 1e-5)

    pos, neg = resid(lambda r: concept in r.concepts), resid(lambda r: concept not in r.concepts)
    direction = pos.mean(0) - neg.mean(0)
    direction /= direction.norm()
    return direction, float(torch.quantile(neg @ direction, 0.99))


def test_selection_picks_the_sae_with_planted_concept_features(lm, tmp_path):
    """Known answer: an SAE with a violence and a cybercrime detector beats one whose features
    ignore the input, and triage finds exactly those detectors with their concepts."""
    records = tiny_records()
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(records)
    d_sae, k = 32, 4
    noise = torch.zeros(lm.hidden_size, d_sae)  # decoy features ignore the input entirely
    constant_bias = 0.01 * torch.arange(d_sae, dtype=torch.float32)
    decoy = _save_topk_sae(tmp_path / "decoy", noise, constant_bias, k)
    w_enc, b_enc = noise.clone(), constant_bias.clone()  # planted: two detectors replace two decoys
    for feature, concept in ((0, "violence"), (1, "cybercrime")):
        direction, midpoint = _concept_direction(lm, records, concept)
        w_enc[:, feature] = 100 * direction
        b_enc[feature] = -100 * midpoint
    planted = _save_topk_sae(tmp_path / "planted", w_enc, b_enc, k)
    ws.add_sae(decoy, sae_id="decoy")
    ws.add_sae(planted, sae_id="planted")
    ws.collect(TINY_COLLECT, progress=False)

    ranked = sorted(ws.select(), key=lambda r: -r.selection_score)
    assert [r.id for r in ranked] == ["planted", "decoy"]
    assert ws.selected_sae == "planted"
    detail = ranked[0].selection["concepts"]
    assert detail["violence"]["best_feature"] == 0 and detail["violence"]["best_auroc"] > 0.95
    assert detail["cybercrime"]["best_feature"] == 1 and detail["cybercrime"]["best_auroc"] > 0.95
    assert ranked[1].selection_score == pytest.approx(0.0, abs=0.05)

    counts = ws.triage()
    with Session(ws.engine) as session:
        candidates = {
            f.index: f.concept
            for f in session.exec(
                select(Feature).where(Feature.sae_id == "planted", Feature.candidate)
            )
        }
    assert candidates == {0: "violence", 1: "cybercrime"}
    assert counts == {"violence": 1, "cybercrime": 1}
    status = ws.status()
    assert status["safety_candidates"] == 2 and status["selected_sae"] == "planted"
    # Overriding the choice is honoured.
    ws.select(override="decoy")
    assert ws.selected_sae == "decoy"


def test_select_reads_back_scores_of_unchanged_saes(triaged_ws, tmp_path, lm, monkeypatch):
    """The protocol scores the search candidates twice; with the same corpus labels and config
    the second `select` reads their scores back (the scorer is never called), and a changed
    config scores again."""
    import safesail.selection.run as selection_run

    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    before = {r.id: (r.selection_score, r.selection) for r in ws.saes()}

    def refuse(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(selection_run, "score_sae", refuse)
    ws.select(config=SelectionConfig(rank_by="score"))
    assert {r.id: (r.selection_score, r.selection) for r in ws.saes()} == before
    with pytest.raises(AssertionError, match="scored again"):
        ws.select(config=SelectionConfig(contrast="benign"))


# -- bad input: one clear line, nothing written ----------------------------------------------


def test_sae_with_wrong_d_in_is_refused(lm, tmp_path):
    ws = make_workspace(tmp_path / "ws", lm)
    path = _save_topk_sae(tmp_path / "small", torch.randn(64, 16), torch.zeros(16), 4)
    with pytest.raises(SafesailError, match="d_in=64.*hidden size 576"):
        ws.add_sae(path)
    assert ws.saes() == []


def test_layer_that_does_not_exist_is_refused(lm, tmp_path, sae_copy):
    from safesail.config import SaeSpec

    ws = make_workspace(tmp_path / "ws", lm)
    with pytest.raises(SafesailError, match="layer 99 does not exist.*0..29"):
        ws.add_sae(sae_copy, layer=99)
    with pytest.raises(SafesailError, match="layer 40 does not exist"):
        ws.train_saes([SaeSpec(40, 64, 4)])
    assert ws.saes() == []


def test_not_an_sae_folder(lm, tmp_path):
    ws = make_workspace(tmp_path / "ws", lm)
    with pytest.raises(SafesailError, match="not an SAE in sae-lens format"):
        ws.add_sae(tmp_path)


def test_empty_corpus_is_refused(lm, tmp_path, sae_copy):
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_sae(sae_copy)
    with pytest.raises(SafesailError, match="corpus is empty"):
        ws.collect(TINY_COLLECT, progress=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:////no/such/folder/x.db", "cannot open database"),
        ("nosuchdb://host/x", "cannot open database URL"),
    ],
)
def test_database_url_that_cannot_be_opened(tmp_path, url, message):
    from safesail.config import WorkspaceConfig
    from safesail.workspace import Workspace

    with pytest.raises(SafesailError, match=message):
        Workspace(WorkspaceConfig(tmp_path / "ws", url))


def test_hub_model_name_while_offline(monkeypatch, tmp_path):
    from safesail.model.lm import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SafesailError, match="not available offline.*local folder with --model"):
        load_model("some-org/some-model-that-is-not-cached", cache_dir=tmp_path)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safesail.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=600,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, phrase: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("safesail: error:") and phrase in last, last


@pytest.mark.parametrize(
    ("rows", "phrase"),
    [
        (
            [{"text": "hello there", "concept": "benign"}, {"text": "", "concept": "violence"}],
            "row 2",
        ),
        ([{"text": "a bomb threat", "concept": "explosions"}], "unknown concept 'explosions'"),
    ],
)
def test_cli_bad_corpus_rows_write_nothing(tmp_path, rows, phrase):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _cli("corpus", "add", str(path), "--workspace", str(tmp_path / "ws"))
    _assert_one_line_error(result, phrase)
    ws = make_workspace(tmp_path / "ws", None)
    with Session(ws.engine) as session:
        assert session.exec(select(CorpusText)).all() == []


def test_cli_pretrained_release_while_offline(tmp_path):
    result = _cli(
        "sae", "add", "--release", "gpt2-small-res-jb", "--sae-id", "blocks.8.hook_resid_pre",
        "--workspace", str(tmp_path / "ws"),
    )  # fmt: skip
    _assert_one_line_error(result, "offline")
    assert "safesail sae add --path" in result.stderr


# -- the whole job through the CLI ------------------------------------------------------------


def test_demo_headless_end_to_end_and_rerun(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": r.text, "concept": r.concepts[0]}) + "\n" for r in tiny_records()
        )
    )
    ws_dir = tmp_path / "ws"
    args = [
        "demo",
        "--headless",
        "--quiet",
        "--workspace",
        str(ws_dir),
        "--corpus",
        str(corpus),
        "--epochs",
        "2",
        "--layers",
        "1,2",
    ]
    args += [f for spec in ("1:64:4", "2:64:4", "2:256:4") for f in ("--spec", spec)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "SAE ranking" in out and "safety candidates" in out and "time per step:" in out
    assert not (ws_dir / "residuals").exists()  # the one forward pass's store, dropped once read

    result = _cli("status", "--json", "--workspace", str(ws_dir))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    for key in (
        "features",
        "features_with_examples",
        "safety_candidates",
        "saes",
        "selected_sae",
        "labels",
        "coverage",
    ):
        assert key in status
    saes = {s["id"]: s for s in status["saes"]}
    assert all(s["selection_score"] is not None and s["core"] for s in saes.values())
    # the configuration search: the best pre-explanation index of the three candidates ...
    search = [saes[i] for i in ("L1-w64-k4", "L2-w64-k4", "L2-w256-k4")]
    best = max(search, key=lambda s: (s["pre_explanation"]["index"], s["selection_score"]))
    assert status["selected_sae"] == best["id"]
    assert status["features"] == best["d_sae"]
    # ... then its width and k at both layers, each triaged: the landscape across depth
    config = [s for s in saes.values() if (s["d_sae"], s["k"]) == (best["d_sae"], best["k"])]
    assert sorted(s["layer"] for s in config) == [1, 2]
    assert all(s["triage"] is not None for s in config)
    assert set(status["landscape"]) == {"1", "2"}
    assert {layer: c for layer, c in status["landscape"].items()} == {
        str(s["layer"]): s["triage"] for s in config
    }
    assert sum(status["landscape"][str(best["layer"])].values()) == status["safety_candidates"]
    assert 0 < status["features_with_examples"] <= status["features"]
    assert status["safety_candidates"] > 0
    assert set(status["candidates_per_concept"]) <= {"violence", "cybercrime"}
    assert status["labels"]["human"] == status["labels"]["auto_accepted"] == 0
    assert status["coverage"] == 0.0

    def no_second_pass(*_args, **_kwargs):
        raise AssertionError("a rerun of a finished protocol ran the forward pass again")

    monkeypatch.setattr(Workspace, "cache_residuals", no_second_pass)
    assert main(args) == 0  # rerun: nothing new, nothing duplicated
    again = json.loads(_cli("status", "--json", "--workspace", str(ws_dir)).stdout)
    assert again["corpus_texts"] == status["corpus_texts"] == len(tiny_records())
    assert {k: v for k, v in again.items() if k != "saes"} == {
        k: v for k, v in status.items() if k != "saes"
    }
    assert np.allclose(
        [s["selection_score"] for s in again["saes"]],
        [s["selection_score"] for s in status["saes"]],
    )


def test_cli_steps_one_by_one(tmp_path, sae_copy, capsys):
    """Each subcommand on its own, with defaults and overrides, as a user runs them."""
    corpus = tmp_path / "corpus.csv"
    corpus.write_text(
        "text,concept\n" + "".join(f'"{r.text}",{r.concepts[0]}\n' for r in tiny_records())
    )
    ws = ["--workspace", str(tmp_path / "ws"), "--quiet"]
    assert main(["corpus", "add", str(corpus), *ws]) == 0
    assert main(["corpus", "show", *ws]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == {
        "benign": 30,
        "cybercrime": 24,
        "violence": 30,
    }
    assert main(["sae", "add", "--path", str(sae_copy), "--id", "mine", *ws]) == 0
    assert main(["collect", "--top-k", "3", *ws]) == 0
    assert main(["select", *ws]) == 0
    assert main(["triage", "--min-support", "2", *ws]) == 0
    out = capsys.readouterr().out
    assert "mine *" in out and "safety candidates in mine" in out
    assert main(["sae", "list", *ws]) == 0
    assert main(["triage", "--min-precision", "2", *ws]) == 2  # bad value: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "safesail: error: min_precision must be a number in [0.0, 1.0], got 2.0 — fix that "
        "flag's value (`safesail triage --help` lists them)"
    ]
    with Session(make_workspace(tmp_path / "ws", None).engine) as session:
        features = session.exec(select(Feature).where(Feature.sae_id == "mine")).all()
    assert all(len([e for e in feature_examples(f) if e.kind == 0]) <= 3 for f in features)


def test_triage_passes_its_settings_to_selectivity(triaged_ws, tmp_path, lm, monkeypatch):
    """--contrast and --fire-fraction must reach the selectivity computation, not just parse.
    On a copy: the shared fixtures stay as collected (other files compare rows with them)."""
    from safesail.triage import run as selection
    from safesail.triage.config import TriageConfig

    seen = []
    real = selection.feature_selectivity

    def spy(*args):
        seen.append(args[3:])
        return real(*args)

    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    monkeypatch.setattr(selection, "feature_selectivity", spy)
    ws.triage(TriageConfig(contrast="benign", fire_fraction=0.3))
    assert seen == [(0.3, "benign")]


def test_train_resumes_from_saved_sae_folders_without_a_forward(
    trained_ws, lm, tmp_path, monkeypatch
):
    """A crash after training but before registering: the rerun registers, recomputing nothing."""
    import shutil

    from safesail.model import training
    from tests.conftest import TINY_SPECS, TINY_TRAIN

    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records())
    shutil.copytree(trained_ws.config.sae_dir, ws.config.sae_dir)

    def no_forward(*_args, **_kwargs):
        raise AssertionError("residuals gathered although every SAE folder exists")

    monkeypatch.setattr(training, "gather_residuals", no_forward)
    assert ws.train_saes(TINY_SPECS, TINY_TRAIN) == [s.sae_id for s in TINY_SPECS]
    assert {r.id for r in ws.saes()} == {s.sae_id for s in TINY_SPECS}


def test_status_reports_each_rooms_record_under_its_key(tmp_path):
    """Null until the room ran, then the record as its room wrote it (a typed contract)."""
    from safesail.config import WorkspaceConfig
    from safesail.db.contracts import LearnerState, write_record
    from safesail.db.tables import session_scope
    from safesail.status import ROOM_RECORDS
    from safesail.workspace import Workspace

    ws = Workspace(WorkspaceConfig(tmp_path / "ws"))
    status = ws.status()
    assert all(status[cls.KEY] is None for cls in ROOM_RECORDS)
    assert status["selected_sae"] is None and status["coverage"] == 0.0
    record = LearnerState(sae_id="x", n_labels=3, curve=[[3, 0.5]])
    with session_scope(ws.engine) as session:
        write_record(session, record)
    assert ws.status()[LearnerState.KEY] == record.to_dict()
    with pytest.raises(SafesailError, match="no SAE selected yet"):
        ws.triage()
