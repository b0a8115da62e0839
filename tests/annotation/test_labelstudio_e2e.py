"""The labeling loop against a REAL Label Studio server, started once per session by the room's
own `up` (first start 60-100 s), with its data under a session tmp dir. Each test works on its
own copy of the triaged tiny workspace and so its own project on that server."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, select

from annotation import push as push_mod
from annotation import server
from annotation.pull import pull
from annotation.push import push, server_keys
from annotation.simulate import simulate
from annotation.transport import ClientConfig, open_client
from safesail.config import default_cache_dir
from safesail.db.tables import Annotation, Context, Explanation, LabelTask, session_scope
from safesail.errors import SafesailError
from safesail.procs import stop_group
from tests.conftest import copy_workspace

FAST = ClientConfig(retries=1, backoff=0.05, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ls_home (the one session Label Studio server) lives in tests/conftest.py, shared with
# the PostgreSQL tests.


@pytest.fixture
def ws(triaged_ws, ls_home, tmp_path, lm):
    """A private copy of the triaged workspace talking to the session server."""
    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    (tmp_path / "ws" / "label-studio").symlink_to(ls_home / "label-studio")
    return ws


def _d(item) -> dict:
    """SDK items are dicts or pydantic models depending on the field."""
    return item if isinstance(item, dict) else item.model_dump()


def _tasks(ws):
    with Session(ws.engine) as session:
        return session.exec(select(LabelTask)).all()


def _server_tasks(ws):
    c = open_client(ws, FAST)
    project = json.loads(json.dumps(ws.status()["annotation"]))["project"]
    return list(c.sdk.tasks.list(project=project, fields="all")), c


def test_server_status_and_secrets(ls_home):
    state = server.status(ls_home)
    assert state.running and state.healthy and state.url.startswith("http://127.0.0.1:")
    p = server.paths(ls_home)
    assert stat.S_IMODE(os.stat(p.credentials).st_mode) == 0o600
    creds = server.credentials(ls_home)
    log = p.log.read_text(errors="replace")
    assert creds["token"] not in log and creds["password"] not in log
    # started without `label listen`: Label Studio's SSRF subnet ban stays on
    environ = Path(f"/proc/{state.pid}/environ").read_bytes().split(b"\0")
    assert not any(v.startswith(b"LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS") for v in environ)
    assert not server.allows_local_webhooks(ls_home)
    assert (p.data / "label_studio.sqlite3").exists()  # data in the workspace, not in ~
    again = server.up(ls_home, default_cache_dir(), progress=False)
    assert again.pid == state.pid  # idempotent: already running


def test_push_annotate_pull_rerun(ws):
    sae_id = ws.selected_sae
    with session_scope(ws.engine) as session:  # automatic explanations become predictions
        for f in range(64):
            session.add(
                Explanation(sae_id=sae_id, feature=f, source="auto", status="queued",
                            concepts=["violence"], text="Fires on stabbings.",
                            model_version="explainer-v1", probability=0.42)
            )  # fmt: skip
    first = push(ws, 6, overlap=0.5, config=FAST, progress=False)
    assert first.pushed == 6 and first.total_tasks == 6
    tasks, c = _server_tasks(ws)
    assert len(tasks) == 6
    assert len({t.data["safesail_key"] for t in tasks}) == 6
    for task in tasks:
        (pred,) = [_d(p) for p in task.predictions]  # no learner yet: the explainer's only
        assert pred["model_version"] == "explainer-v1" and pred["score"] == pytest.approx(0.42)
        assert pred["result"][0]["value"]["choices"] == ["violence"]

    sim = simulate(ws, noise=0.0, config=FAST, progress=False)
    wanted = sum(t.annotators_wanted for t in _tasks(ws))
    assert sim.annotations == wanted and wanted > 6  # some tasks asked for two annotators
    result = pull(ws, config=FAST, progress=False)
    assert result.new == wanted and result.invalid == 0 and result.features_labeled == 6
    status = ws.status()
    assert status["labels"]["human"] == 6
    assert status["annotation"]["annotations"] == wanted and status["annotation"]["adjudication"]
    assert status["learner"] is not None  # pull retrained the learner
    with Session(ws.engine) as session:
        rows = session.exec(select(Annotation)).all()
        assert len({r.annotator for r in rows}) == 2
        assert all(r.lead_time and r.created_at and r.raw for r in rows)
    # noise 0: both annotators agree on the overlap items
    kappas = [v["cohen"] for v in result.kappa.values() if v["cohen"] is not None]
    assert kappas and all(k == pytest.approx(1.0) for k in kappas)

    # reruns: nothing new, nothing twice
    again = pull(ws, config=FAST, progress=False)
    assert again.new == 0 and again.updated == 0
    assert simulate(ws, config=FAST, progress=False).annotations == 0
    second = push(ws, 4, config=FAST, progress=False)
    tasks, _ = _server_tasks(ws)
    assert second.batch == 2 and len(tasks) == 10 == len({t.data["safesail_key"] for t in tasks})
    learner_version = ws.status()["learner"]["model_version"]
    newest = [t for t in tasks if t.id in {x.task_id for x in _tasks(ws) if x.batch == 2}]
    assert all(learner_version in {_d(p)["model_version"] for p in t.predictions} for t in newest)
    # the learner's order reaches the server: served by id (import order) and sortable by the
    # queue position, batch 2 after batch 1; its guess is a scored pre-annotation
    positions = [t.data["queue_position"] for t in sorted(newest, key=lambda t: t.id)]
    assert positions == sorted(positions) and min(positions) > max(
        t.data["queue_position"] for t in tasks if t not in newest
    )
    guesses = [_d(p) for t in newest for p in t.predictions]
    assert all(0 < g["score"] <= 1 for g in guesses if g["model_version"] == learner_version)
    assert len(_tasks(ws)) == 10

    # an annotator changes an answer: pulled as changed, the label follows
    ann = next(a for a in tasks[0].annotations)
    feature = tasks[0].data["feature"]
    c.sdk.annotations.update(ann["id"], result=[
        {"from_name": "concepts", "to_name": "contexts", "type": "choices",
         "value": {"choices": ["fraud"]}},
        {"from_name": "confidence", "to_name": "contexts", "type": "rating",
         "value": {"rating": 5}},
    ])  # fmt: skip
    changed = pull(ws, config=FAST, progress=False)
    assert changed.updated == 1 and changed.new == 0
    with Session(ws.engine) as session:
        labels = session.exec(
            select(Explanation).where(Explanation.feature == feature, Explanation.source == "human")
        ).all()
    assert len(labels) == 1 and "fraud" in labels[0].concepts


def test_crash_between_import_and_commit_then_rerun(ws, monkeypatch):
    real = push_mod.record_push
    calls = Counter()

    def crash_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed after the HTTP import, before the commit")
        return real(*args, **kwargs)

    monkeypatch.setattr(push_mod, "record_push", crash_once)
    with pytest.raises(KeyboardInterrupt):
        push(ws, 4, config=FAST, progress=False)
    assert _tasks(ws) == []  # nothing committed locally, but 4 tasks exist on the server
    c = open_client(ws, FAST)
    project = ws.status()["annotation"]["project"]
    assert len(server_keys(c, project)) == 4

    rerun = push(ws, 4, config=FAST, progress=False)
    assert rerun.adopted == 4 and rerun.pushed == 4
    on_server = server_keys(c, project)
    local = _tasks(ws)
    assert len(on_server) == len(local) == 8  # adopted, not imported twice
    assert {(t.sae_id, t.feature) for t in local} == {
        (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])) for k in on_server
    }
    assert {t.task_id for t in local} == {i for i, _ in on_server.values()}


def test_server_down_clear_error_then_resume(ws, ls_home):
    push(ws, 2, config=FAST, progress=False)
    state = server.status(ls_home)
    port = json.loads(server.paths(ls_home).state.read_text())["port"]
    stop_group(state.pid, server.STOP_GRACE_S)  # the server dies under us (as in a crash)
    try:
        with pytest.raises(SafesailError, match="unreachable or failing .* after 2 attempts"):
            push(ws, 2, config=FAST, progress=False)
        with pytest.raises(SafesailError, match="unreachable"):
            pull(ws, config=FAST, progress=False)
    finally:
        server.up(ls_home, default_cache_dir(), server.ServerConfig(port=port), progress=False)
    assert len(_tasks(ws)) == 2  # the failed push wrote nothing
    resumed = push(ws, 2, config=FAST, progress=False)
    assert resumed.total_tasks == 4 and resumed.batch == 2


def test_malformed_annotation_is_kept_aside(ws):
    push(ws, 2, config=FAST, progress=False)
    c = open_client(ws, FAST)
    task = _tasks(ws)[0]
    c.sdk.annotations.create(
        task.task_id,
        result=[{"from_name": "concepts", "to_name": "contexts", "type": "choices",
                 "value": {"choices": ["telepathy"]}}],
    )  # fmt: skip
    result = pull(ws, config=FAST, progress=False)
    assert result.new == 1 and result.invalid == 1 and result.features_labeled == 0
    assert "unknown concept(s) telepathy" in result.problems[0]
    with Session(ws.engine) as session:
        row = session.exec(select(Annotation)).one()
        assert not row.valid and row.concepts == ["telepathy"] and row.raw["result"]
        assert session.exec(select(Explanation).where(Explanation.source == "human")).all() == []
    assert ws.status()["annotation"]["invalid"] == 1


def test_script_in_corpus_text_comes_back_inert(ws):
    payload = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
    result = push(ws, 3, config=FAST, progress=False)
    assert result.pushed == 3
    # poison every context of the workspace, then push more features that show them
    with session_scope(ws.engine) as session:
        for ctx in session.exec(select(Context)):
            ctx.tokens = [payload if i == 0 else t for i, t in enumerate(ctx.tokens)]
            session.add(ctx)
    push(ws, 3, config=FAST, progress=False)
    tasks, _ = _server_tasks(ws)
    poisoned = [t for t in tasks if "pwned" in t.data["html"]]
    assert poisoned
    for task in poisoned:
        html = task.data["html"]
        assert "<script" not in html and "<img" not in html
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html


def test_simulated_demo_fills_labels_and_learner(triaged_ws, ls_home, tmp_path, lm, capsys):
    """`safesail demo --headless --simulate-annotators` on the tiny workspace: rounds of push /
    answer / pull through the real server leave human labels and a held-out macro-F1."""
    from safesail.cli.main import main
    from tests.conftest import TINY_SPECS

    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    (tmp_path / "ws" / "label-studio").symlink_to(ls_home / "label-studio")
    specs = [f for s in TINY_SPECS for f in ("--spec", f"{s.layer}:{s.d_sae}:{s.k}")]
    args = ["demo", "--headless", "--quiet", "--workspace", str(ws.config.workspace), *specs]
    args += ["--simulate-annotators", "--rounds", "2", "--batch", "6", "--explain-limit", "0"]
    args += ["--explain-max-gold", "0"]  # the explainer has its own end-to-end test
    args += ["--no-causal"]  # on by default here; tests/causal/test_causal.py runs the demo's step
    ws.engine.dispose()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "round 2:" in out
    status = ws.status()
    assert status["labels"]["human"] >= 8  # two rounds of 6 tasks, a few features may be skipped
    assert status["learner"]["n_labels"] == status["labels"]["human"]
    assert status["learner"]["macro_f1_heldout"] is not None
    assert status["annotation"]["tasks"] == 12 and status["annotation"]["invalid"] == 0
    assert server.status(ls_home).running  # the demo leaves a server it did not start alone
    ws.engine.dispose()
    assert main(args) == 0  # a rerun resumes: no third round, nothing pushed twice
    assert "2 round(s) already pushed (--rounds 2); no new round" in capsys.readouterr().out
    assert ws.status()["annotation"]["tasks"] == 12


def test_webhook_pulls_new_annotations(ws, ls_home):
    """`label listen`: Label Studio's ANNOTATION_CREATED webhook (to a local endpoint, allowed by
    the managed server's settings, which the listen path turns on) makes the annotations land
    without a manual pull."""
    import threading
    import time

    from annotation.listen import webhook_server

    push(ws, 3, config=FAST, progress=False)
    httpd = webhook_server(ws, _free_port(), FAST)
    assert server.allows_local_webhooks(ls_home)  # restarted with the SSRF ban off for this
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        answered = simulate(ws, noise=0.0, config=FAST, progress=False).annotations
        assert answered >= 3
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with Session(ws.engine) as session:
                stored = len(session.exec(select(Annotation)).all())
            if stored == answered:
                break
            time.sleep(1)
        assert stored == answered
    finally:
        httpd.shutdown()
        httpd.server_close()
