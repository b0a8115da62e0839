"""Every room on a real PostgreSQL server as well as on SQLite, and a team's concurrent writers.

`db_url` runs the end-to-end path once per backend: corpus, collect (the tiny trained SAEs of
`trained_ws`, registered from their folders), select, triage, push / simulate / pull with the
real Label Studio, explain (against the HTTP double of an OpenAI-compatible endpoint; the real
embedded server is test_explainer.py's), export, import and the app's reads; the features must
come out as on the SQLite reference `triaged_ws`. The concurrency test runs two `safesail label
pull` processes and one `safesail explain` at once on one PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, select

from annotation.pull import pull
from annotation.push import push
from annotation.simulate import simulate
from annotation.transport import ClientConfig, open_client
from app import browse, frames, reads
from exports.api import export_gold, import_file
from safesail.db.tables import Annotation, Explanation, Feature, LabelTask, LlmCall
from safesail.explainer.config import ExplainConfig, LlmConfig
from safesail.explainer.pipeline import explain
from safesail.selection.config import SelectionConfig
from tests.conftest import TINY_COLLECT, make_workspace, tiny_records
from tests.explainer.test_explainer_failures import Double

FAST = ClientConfig(retries=1, backoff=0.05, timeout=30)
FEATURE_FIELDS = ("n_fire", "firing_rate", "max_act", "quantiles", "concept_stats", "examples",
                  "candidate", "concept", "triage_reason")  # fmt: skip


def _features(ws, sae_id: str) -> dict[int, tuple]:
    with Session(ws.engine) as session:
        rows = session.exec(select(Feature).where(Feature.sae_id == sae_id))
        return {f.index: tuple(getattr(f, name) for name in FEATURE_FIELDS) for f in rows}


def _rows(ws, table, *where) -> list:
    with Session(ws.engine) as session:
        return list(session.exec(select(table).where(*where)))


def _built(path: Path, lm, db_url: str | None, reference, sae_ids: list[str] | None = None):
    """A workspace on db_url built like the reference: the tiny corpus, the reference's SAE
    folders (all of them, or sae_ids), collected, selected and triaged; linked to Label
    Studio by the caller."""
    ws = make_workspace(path, lm, db_url)
    assert ws.add_corpus(tiny_records()) == len(tiny_records())
    for record in reference.saes():
        if sae_ids is None or record.id in sae_ids:
            ws.add_sae(Path(record.path), sae_id=record.id)
    ws.collect(TINY_COLLECT, progress=False)
    ws.select(config=SelectionConfig(rank_by="score"))
    ws.triage()
    return ws


def _double_llm(double) -> LlmConfig:
    return LlmConfig(base_url=double.url, model="double", prices={"double": (1.0, 2.0)},
                     backoff_s=0.0)  # fmt: skip


def test_every_room_end_to_end(db_url, triaged_ws, ls_home, lm, tmp_path):
    ws = _built(tmp_path / "ws", lm, db_url, triaged_ws)
    assert ws.engine.dialect.name == ("sqlite" if db_url is None else "postgresql")
    # corpus, collect, select, triage: the same features as on the SQLite reference
    sae_id = ws.selected_sae
    assert sae_id == triaged_ws.selected_sae
    assert _features(ws, sae_id) == _features(triaged_ws, sae_id)
    status, reference = ws.status(), triaged_ws.status()
    for key in ("features", "features_with_examples", "safety_candidates", "triage_rejected"):
        assert status[key] == reference[key]
    assert [(s["id"], s["selection_score"]) for s in status["saes"]] == [
        (s["id"], s["selection_score"]) for s in reference["saes"]
    ]

    # push, answer and pull through the real Label Studio
    (tmp_path / "ws" / "label-studio").symlink_to(ls_home / "label-studio")
    pushed = push(ws, 6, overlap=0.5, config=FAST, progress=False)
    assert pushed.pushed == 6
    wanted = sum(t.annotators_wanted for t in _rows(ws, LabelTask))
    assert simulate(ws, noise=0.0, config=FAST, progress=False).annotations == wanted
    pulled = pull(ws, config=FAST, progress=False)
    assert (pulled.new, pulled.invalid, pulled.features_labeled) == (wanted, 0, 6)
    assert pull(ws, config=FAST, progress=False)[1:3] == (0, 0)  # nothing new, nothing twice
    assert len(_rows(ws, Annotation)) == wanted
    humans = _rows(ws, Explanation, Explanation.source == "human")
    assert len(humans) == 6 == len({h.feature for h in humans})
    assert {h.feature for h in humans} == {t.feature for t in _rows(ws, LabelTask)}

    # explain three features nobody labeled, against the OpenAI-compatible double (no gold is
    # asked, so nothing can be accepted: ask_unprovable stores the answers as drafts)
    labeled = {h.feature for h in humans}
    chosen = [i for i, f in sorted(_features(ws, sae_id).items()) if f[5] and i not in labeled][:3]
    double = Double([])
    try:
        report = explain(ws, ExplainConfig(max_gold=0, ask_unprovable=True), _double_llm(double),
                         features=chosen, progress=False)  # fmt: skip
    finally:
        double.close()
    autos = _rows(ws, Explanation, Explanation.source == "auto")
    assert report.explained == 3 == len(autos) and sorted(a.feature for a in autos) == chosen
    calls = _rows(ws, LlmCall)
    assert len(calls) == double.requests > 3  # the votes (and scorer calls), each stored once
    assert {c.feature for c in calls} == {a.feature for a in autos}

    # export, then import the export back: its rows are recognised by their keys, nothing is
    # added twice (not even as priors)
    manifest = export_gold(ws, "jsonl", tmp_path / "out", include_unaccepted=True)
    assert manifest["records"] == len(humans) + len(autos)
    imported = import_file(ws, "jsonl", tmp_path / "out")
    assert imported.added == 0 and imported.present == manifest["records"]
    assert not imported.skipped
    assert _rows(ws, Explanation, Explanation.source == "prior") == []

    # the app's reads, on a plain engine of the same URL
    engine = reads.connect(tmp_path / "ws", db_url)
    assert engine is not None and reads.selected_sae(engine) == sae_id
    assert {s["id"] for s in reads.sae_list(engine)} == {s["id"] for s in status["saes"]}
    assert reads.annotation_summary(engine).annotations == wanted
    cost = frames.llm_cost(engine)
    assert cost["calls"].sum() == len(calls)
    assert cost["tokens"].sum() == sum(c.prompt_tokens + c.completion_tokens for c in calls)
    coverage = frames.coverage(engine)
    assert coverage["features"].sum() == status["safety_candidates"]
    assert frames.labels_per_day(engine)["labels"].sum() == 6
    table = browse.feature_table(engine, sae_id).set_index("feature")
    assert all(table.loc[h.feature, "source"] == "human" for h in humans)
    view = browse.feature_view(engine, sae_id, humans[0].feature)
    assert view is not None and len(view.annotations) >= 1 and len(view.contexts) >= 1
    engine.dispose()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "safesail.cli.main", *args]


def test_two_pulls_and_an_explain_at_once_lose_and_duplicate_nothing(
    pg_url, triaged_ws, ls_home, lm, tmp_path
):
    root = tmp_path / "ws"
    ws = _built(root, lm, pg_url, triaged_ws, [triaged_ws.selected_sae])
    (root / "label-studio").symlink_to(ls_home / "label-studio")
    assert push(ws, 8, overlap=0.5, config=FAST, progress=False).pushed == 8
    tasks = _rows(ws, LabelTask)
    wanted = sum(t.annotators_wanted for t in tasks)
    assert simulate(ws, noise=0.0, config=FAST, progress=False).annotations == wanted
    # the explainer works on features nobody is labeling, so its expected rows are fixed
    pushed = {t.feature for t in tasks}
    with_examples = [i for i, f in sorted(_features(ws, ws.selected_sae).items()) if f[5]]
    explained = [i for i in with_examples if i not in pushed][:4]
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"double": [1.0, 2.0]}))

    double = Double([])
    env = {**os.environ, "SAFESAIL_DB_URL": pg_url}  # the password never goes on argv
    common = ["--workspace", str(root), "--quiet"]
    # no gold is asked, so nothing can be accepted: --ask-unprovable stores drafts
    explain_args = ["explain", *common, "--base-url", double.url, "--llm-model", "double",
                    "--price-table", str(prices), "--max-gold", "0", "--ask-unprovable"]  # fmt: skip
    for f in explained:
        explain_args += ["--feature", str(f)]
    try:
        procs = [
            subprocess.Popen(
                _cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )  # fmt: skip
            for args in (["label", "pull", *common], ["label", "pull", *common], explain_args)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        double.close()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert pg_url.split(":")[2].split("@")[0] not in out  # the password is in no output

    # two pulls: every answer stored once, one human label per feature
    answers, _ = _server_answers(ws)
    rows = _rows(ws, Annotation)
    assert len(rows) == wanted == len(answers)
    assert Counter(r.annotation_id for r in rows) == Counter(answers)
    humans = _rows(ws, Explanation, Explanation.source == "human")
    assert len(humans) == len(pushed) == len({h.feature for h in humans})
    assert {h.feature for h in humans} == pushed and all(h.status == "accepted" for h in humans)
    new = sorted(int(out.split("pulled ")[1].split()[0]) for out in outputs[:2])
    assert new == [0, wanted]  # the second pull took its turn after the first and found it done
    # one explain: one explanation per feature, each LLM request stored once
    autos = _rows(ws, Explanation, Explanation.source == "auto")
    assert sorted(a.feature for a in autos) == sorted(explained)
    calls = _rows(ws, LlmCall)
    assert len(calls) == double.requests and {c.feature for c in calls} == set(explained)
    print(
        f"\nconcurrency: Annotation {len(rows)} (expected {wanted}), human Explanation "
        f"{len(humans)} (expected {len(pushed)}), auto Explanation {len(autos)} (expected "
        f"{len(explained)}), LlmCall {len(calls)} (requests served {double.requests})"
    )
    again = pull(ws, config=FAST, progress=False)
    assert (again.new, again.updated, again.deleted) == (0, 0, 0)


def _server_answers(ws) -> tuple[list[int], int]:
    """The ids of every annotation on the workspace's Label Studio project, and its task count."""
    client = open_client(ws, FAST)
    project = ws.status()["annotation"]["project"]
    tasks = list(client.sdk.tasks.list(project=project, fields="all"))
    return [dict(a)["id"] for t in tasks for a in t.annotations or []], len(tasks)


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 2501])
def test_chunks_cover_every_value_once(n):
    from safesail.db.queries import IN_CHUNK, chunked

    parts = list(chunked(range(n)))
    assert [v for part in parts for v in part] == list(range(n))
    assert all(0 < len(part) <= IN_CHUNK for part in parts)
