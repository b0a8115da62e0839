"""The explainer end to end over real HTTP: the embedded llama.cpp server serving SmolLM2,
started by safesail's own server module, on a tiny workspace with simulated gold labels."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest
from sqlmodel import Session, delete, select

from safesail.cli.main import main
from safesail.db.contracts import CalibrationReport, read_record
from safesail.db.tables import Explanation, Feature, LlmCall, Score
from safesail.errors import SafesailError
from safesail.explainer.clients import LlmClient
from safesail.explainer.config import EMBEDDED_ALIAS, ExplainConfig, LlmConfig
from safesail.explainer.pipeline import explain
from safesail.explainer.plugin import demo
from safesail.explainer.server import EmbeddedServer
from safesail.explainer.simulate import seed_gold
from tests.conftest import copy_workspace, skip_or_fail

NO_LLAMA = "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        skip_or_fail(NO_LLAMA)
    server = EmbeddedServer(tmp_path_factory.mktemp("llm"), port=8790)
    info, _ = server.up()
    yield info.base_url
    server.down()


def _features(ws) -> tuple[list[int], list[int]]:
    """(candidates, other features with examples) of the selected SAE."""
    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature).where(Feature.sae_id == ws.selected_sae, Feature.examples.is_not(None))
        ).all()
    ranked = sorted(rows, key=lambda r: -(r.safety_score or 0))
    return [r.index for r in ranked if r.candidate], [r.index for r in ranked if not r.candidate]


def _counts(ws) -> tuple[int, int, float]:
    with Session(ws.engine) as session:
        calls = list(session.exec(select(LlmCall)))
    return (
        len(calls),
        sum(c.prompt_tokens + c.completion_tokens for c in calls),
        sum(c.cost_usd or 0 for c in calls),
    )


def test_explain_end_to_end_over_real_http(triaged_ws, tmp_path, lm, llm_url):
    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    sae = ws.selected_sae
    candidates, others = _features(ws)
    assert candidates, "the tiny workspace needs a safety candidate"
    gold = (candidates[1:] + others)[:4]
    assert seed_gold(ws.engine, sae, gold) == 4
    every = ("detection", "fuzzing", "simulation", "intruder", "embedding")
    config = ExplainConfig(  # 4 gold prove nothing: the routed candidate is asked as a draft
        limit=1,
        votes=3,
        few_shot=1,
        n_score_pos=2,
        n_score_neg=2,
        scorers=every,
        ask_unprovable=True,
    )
    llm = LlmConfig(base_url=llm_url)
    report = explain(ws, config, llm, progress=False)
    assert report.explained == 5
    with Session(ws.engine) as session:
        auto = list(session.exec(select(Explanation).where(Explanation.source == "auto")))
        human = list(session.exec(select(Explanation).where(Explanation.source == "human")))
        scores = list(session.exec(select(Score)))
        meta = read_record(session, CalibrationReport)
    assert {r.feature for r in auto} == {candidates[0], *gold}
    assert len(human) == 4 and all(h.status == "accepted" for h in human)  # never overwritten
    labels = set(ws.taxonomy.label_values())
    explained = [r for r in auto if r.status != "failed"]
    assert explained, [r.details for r in auto]
    for row in explained:
        assert set(row.concepts) <= labels and row.text and 0 <= row.confidence <= 1
        assert row.model_version == f"{EMBEDDED_ALIAS}/{config.answer_version}"
        # three votes: the share of them naming the chosen concept is the stage's confidence
        assert row.details["stage"] == "llm" and row.probability == row.details["vote_share"]
        assert sum(row.details["votes"].values()) + row.details["invalid"] == 3
        assert row.details["vote_share"] * 3 == row.details["votes"][row.concepts[0]]
    for row in auto:
        if row.feature in gold and row.status != "failed":
            assert row.status in ("queued", "rejected") and row.details["yardstick"]
    assert {"detection", "fuzzing", "simulation", "embedding"} <= {s.scorer for s in scores}
    assert {s.scorer for s in scores} <= set(config.scorers)  # intruder: when its answer is valid
    for s in scores:
        if s.scorer == "embedding":
            assert s.model is None and s.prompt_version.startswith("minilm")
        else:
            assert s.model == EMBEDDED_ALIAS and config.prompt_version in s.prompt_version
    calls, tokens, cost = _counts(ws)
    status = ws.status()
    assert status["llm"] == {"calls": calls, "tokens": tokens, "cost_usd": 0.0} and cost == 0
    with Session(ws.engine) as session:
        steps = {c.step for c in session.exec(select(LlmCall))}
    assert {"explain", "detection"} <= steps
    assert (meta.target, meta.delta, meta.model) == (0.9, 0.1, EMBEDDED_ALIAS)
    (stage,) = meta.stages  # no learner predictions, no escalation: the LLM stage alone
    assert stage.name == "llm" and stage.n_gold == sum(1 for r in explained if r.feature in gold)
    # four gold features prove nothing: every routed feature goes to people
    assert stage.threshold is None and meta.accepted == 0 and meta.needed == 22
    assert stage.reached == 1 and stage.tokens > 0 and stage.seconds > 0  # the candidate's cost
    # status adds the readers' verdict where a reference set exists (none for this tiny SAE)
    assert status["calibration"] == {
        **meta.to_dict(),
        "reference_agreement": None,
        "stale_unrouted": 0,
        "human_queue": status["calibration"]["human_queue"],
    }
    queue = status["calibration"]["human_queue"]  # the candidate asked about, the rest not
    assert sum(queue.values()) == meta.routed and queue["not explained"] == meta.routed - 1

    # rerun: nothing new is asked or paid
    again = explain(ws, config, llm, progress=False)
    assert again.explained == 0 and _counts(ws) == (calls, tokens, cost)

    # interrupted before a feature was stored: rerun redoes it from the cache, free
    with Session(ws.engine) as session:
        lost = session.exec(select(Explanation).where(Explanation.feature == candidates[0])).one()
        session.exec(delete(Score).where(Score.explanation_id == lost.id))
        session.exec(delete(Explanation).where(Explanation.id == lost.id))
        session.commit()
    resumed = explain(ws, config, llm, progress=False)
    assert resumed.explained == 1 and _counts(ws) == (calls, tokens, cost)
    with Session(ws.engine) as session:
        back = session.exec(select(Explanation).where(Explanation.feature == candidates[0])).one()
    assert (back.concepts, back.text) == (lost.concepts, lost.text)


def test_llm_commands_start_once_and_stop(tmp_path, capsys):
    if importlib.util.find_spec("llama_cpp") is None:
        skip_or_fail(NO_LLAMA)
    base = ["--workspace", str(tmp_path / "ws"), "--port", "8791"]
    assert main(["llm", "up", *base]) == 0
    assert main(["llm", "up", *base]) == 0
    out = capsys.readouterr().out
    assert "started" in out and "already running" in out
    assert main(["llm", "status", *base]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] and status["healthy"] and status["model"] == EMBEDDED_ALIAS
    assert main(["llm", "down", *base]) == 0
    assert main(["llm", "status", *base]) == 0
    assert json.loads(capsys.readouterr().out.split("stopped\n")[-1])["running"] is False


def test_a_failed_demo_step_names_the_command_that_resumes_it(triaged_ws, tmp_path, lm):
    """The demo's core steps are done (so they are skipped); a room's step fails: the error
    names the step and the command that reruns only it."""
    from safesail.cli.demo import demo as run_demo
    from safesail.cli.main import build_parser
    from safesail.plugins import Plugin
    from tests.conftest import TINY_SPECS

    def broken(ws, args, progress):
        raise SafesailError("LLM endpoint gone")

    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    specs = [f for s in TINY_SPECS for f in ("--spec", f"{s.layer}:{s.d_sae}:{s.k}")]
    args = build_parser([]).parse_args(["demo", "--workspace", str(tmp_path / "ws"), *specs])
    args.plugins = [
        Plugin(
            "explainer",
            20,
            demo=broken,
            resume=lambda a: f"safesail explain --workspace {a.workspace}",
        )
    ]
    with pytest.raises(SafesailError) as caught:
        run_demo(ws, args, progress=False)
    assert str(caught.value) == (
        "demo step 'explainer' failed (LLM endpoint gone); earlier steps are kept — fix that, "
        f"then `safesail explain --workspace {tmp_path / 'ws'}` reruns only this step; rerunning "
        "the demo skips the finished ones"
    )


def test_demo_step_waits_for_gold_labels(triaged_ws, capsys):
    assert demo(triaged_ws, argparse.Namespace(), False) == 0
    assert "waits for gold labels" in capsys.readouterr().out


def test_a_server_that_dies_is_reported_with_its_signal_and_log(triaged_ws, tmp_path, lm):
    """The real server, its llama.cpp process killed by SIGILL as an illegal instruction would:
    the client says the server died and how, instead of 'connection refused, rerun'."""
    if importlib.util.find_spec("llama_cpp") is None:
        skip_or_fail(NO_LLAMA)
    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    server = EmbeddedServer(ws.config.workspace, port=8792)
    info, _ = server.up()
    try:
        assert server.death() is None
        children = Path(f"/proc/{info.pid}/task/{info.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGILL)
        config = LlmConfig(base_url=info.base_url, max_retries=4, backoff_s=0.2)
        client = LlmClient(ws.engine, config, info.base_url, death=server.death)
        with pytest.raises(SafesailError) as caught:
            client.chat([{"role": "user", "content": "hi"}], step="test", max_tokens=2)
    finally:
        server.down()
    message = str(caught.value)
    assert f"pid {info.pid}) was killed by SIGILL (Illegal instruction)" in message
    assert "make install" in message and "last log lines:" in message
    assert "connection" not in message


def test_cascade_benchmark_runs_on_any_reference_set(triaged_ws, tmp_path, lm, llm_url):
    """bench/cascade.py on the tiny workspace with a stand-in reference set (the corpus-tag
    oracle's labels, split by the reference set's own rule): it runs end to end against the
    real server and ends with the three figures it promises. The figures mean nothing here
    (the oracle is no reader); the benchmark is for a set labeled by reading."""
    import subprocess
    import sys

    from safesail.experts.oracle import oracle_labels
    from safesail.reference.labels import assign_splits, sae_sha256

    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    sae = ws.selected_sae
    candidates, others = _features(ws)
    features = (candidates + others)[:24]
    truth = oracle_labels(ws.engine, sae, features)
    splits = assign_splits(features)
    reference = {
        "sae_id": sae,
        "sae_sha256": sae_sha256(ws.engine, sae),
        "features": [
            {
                "feature": f,
                "labels": truth[f],
                "confidence": 3,
                "reason": "oracle stand-in",
                "stratum": "all",
                "weight": 1.0,
                "split": splits[f],
            }
            for f in features
        ],
    }
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(reference))
    ws.engine.dispose()
    script = Path(__file__).resolve().parents[2] / "bench" / "cascade.py"
    run = subprocess.run(
        [sys.executable, str(script), "--workspace", str(ws.config.workspace)]
        + ["--reference", str(path), "--base-url", llm_url, "--votes", "1", "--routed", "4"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(script.parents[1])},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert "majority baseline" in run.stdout and "kappa" in run.stdout
    assert [line.split("=")[0] for line in lines[-3:]] == [
        "coverage_at_target",
        "safety_coverage_at_target",
        "accepted_agreement_reference",
    ]
    assert 0 <= float(lines[-3].split("=")[1]) <= 1
