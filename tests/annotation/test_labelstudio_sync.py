"""Push and pull against a small stdlib HTTP double of Label Studio's API (the endpoints the
client uses, spoken to through the real SDK): an import that the server stores and then answers
too late, and answers that Label Studio invalidates or deletes after they were pulled. The real
server's loop is in test_labelstudio_e2e.py; these are the failure shapes it cannot stage."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from sqlmodel import Session, select

from annotation.pull import pull
from annotation.push import import_tasks
from annotation.transport import ClientConfig, open_client
from safesail.db.contracts import write_record
from safesail.db.labeling import AnnotationSummary
from safesail.db.queries import human_labels
from safesail.db.tables import (
    Annotation,
    Explanation,
    LabelTask,
    SaeRecord,
    open_db,
    session_scope,
)
from safesail.taxonomy import Taxonomy

SAE = "L1-w64-k4"
PROJECT = 7


class FakeLabelStudio:
    """In-memory projects / users / tasks / import; `hang_imports` makes the next import store
    its tasks and then stall past the client's timeout (a read timeout after the commit)."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []
        self.imports = 0
        self.hang_imports = 0
        self.hang_s = 0.0
        self.store_only: int | None = None  # a hung import stores only its first N tasks
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def _send(self, body, code: int = 200) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == f"/api/projects/{PROJECT}/":
                    return self._send({"id": PROJECT, "title": "safesail test"})
                if url.path == "/api/users/":
                    return self._send([{"id": 1, "email": "alice@example.org"},
                                       {"id": 2, "email": "bob@example.org"}])  # fmt: skip
                if url.path == "/api/tasks/":
                    with fake.lock:
                        tasks = [t for t in fake.tasks
                                 if query.get("only_annotated") != "true" or t["annotations"]]  # fmt: skip
                    page = int(query.get("page", 1))
                    size = int(query.get("page_size", 100))
                    chunk = tasks[(page - 1) * size : page * size]
                    return self._send({"tasks": chunk, "total": len(tasks)})
                return self._send({"detail": "not found"}, 404)

            def do_POST(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if url.path != f"/api/projects/{PROJECT}/import":
                    return self._send({"detail": "not found"}, 404)
                with fake.lock:
                    fake.imports += 1
                    hang = fake.hang_imports > 0
                    fake.hang_imports -= hang
                    ids = []
                    for task in body[: fake.store_only] if hang else body:
                        ids.append(len(fake.tasks) + 100)
                        fake.tasks.append({"id": ids[-1], "data": task["data"], "annotations": []})
                if hang:
                    time.sleep(fake.hang_s)  # stored, but the answer comes after the timeout
                self._send({"task_count": len(ids), "task_ids": ids})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        return [t["data"]["safesail_key"] for t in self.tasks]


@pytest.fixture
def fake_ls():
    fake = FakeLabelStudio()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def ws(tmp_path, fake_ls, monkeypatch):
    """Just what push/pull read of a workspace: its database, SAE, taxonomy and folder."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "test-token")
    engine = open_db(f"sqlite:///{tmp_path / 'safesail.db'}")
    with session_scope(engine) as session:
        write_record(session, AnnotationSummary(url=fake_ls.url, project=PROJECT, sae_id=SAE))
        session.add(SaeRecord(id=SAE, source="disk", path="-", layer=1, d_in=64,
                              d_sae=64, k=4, architecture="topk", selected=True))  # fmt: skip
    return SimpleNamespace(
        engine=engine,
        selected_sae=SAE,
        taxonomy=Taxonomy.load(),
        config=SimpleNamespace(workspace=tmp_path),
    )


def _task(feature: int) -> dict:
    key = f"{SAE}:{feature}"
    return {"data": {"safesail_key": key, "feature": feature, "annotators_wanted": 1}}


def test_import_timeout_after_commit_is_not_imported_twice(ws, fake_ls):
    """The server stores the import, then answers after the read timeout: the retry adopts the
    stored tasks by safesail_key instead of importing them a second time."""
    config = ClientConfig(url=fake_ls.url, retries=2, backoff=0.01, timeout=0.5)
    client = open_client(ws, config)
    fake_ls.hang_imports, fake_ls.hang_s = 1, 2.0
    key = f"{fake_ls.url}#{PROJECT}"
    done = import_tasks(ws, client, PROJECT, key, [_task(f) for f in (3, 4, 5)], 1, None, False)
    assert done == 3
    assert fake_ls.keys() == [f"{SAE}:{f}" for f in (3, 4, 5)]  # each task once on the server
    assert fake_ls.imports == 1  # nothing left to import after adopting
    with Session(ws.engine) as session:
        local = {t.feature: t.task_id for t in session.exec(select(LabelTask))}
    assert local == {t["data"]["feature"]: t["id"] for t in fake_ls.tasks}


def test_partly_stored_import_imports_only_the_rest(ws, fake_ls):
    """Two of three tasks reached the server before the answer timed out: the retry adopts
    those two and imports the third alone."""
    config = ClientConfig(url=fake_ls.url, retries=2, backoff=0.01, timeout=0.5)
    client = open_client(ws, config)
    fake_ls.hang_imports, fake_ls.hang_s, fake_ls.store_only = 1, 2.0, 2
    key = f"{fake_ls.url}#{PROJECT}"
    done = import_tasks(ws, client, PROJECT, key, [_task(f) for f in (3, 4, 5)], 1, None, False)
    assert done == 3 and fake_ls.imports == 2
    assert sorted(fake_ls.keys()) == [f"{SAE}:{f}" for f in (3, 4, 5)]
    with Session(ws.engine) as session:
        local = {t.feature: t.task_id for t in session.exec(select(LabelTask))}
    assert local == {t["data"]["feature"]: t["id"] for t in fake_ls.tasks}


def _annotation(ann_id: int, who: int, choice: str, *, cancelled: bool = False, at: str) -> dict:
    return {
        "id": ann_id,
        "completed_by": who,
        "was_cancelled": cancelled,
        "created_at": "2026-12-01T10:00:00Z",
        "updated_at": at,
        "lead_time": 3.0,
        "result": []
        if cancelled
        else [
            {
                "from_name": "concepts",
                "to_name": "contexts",
                "type": "choices",
                "value": {"choices": [choice]},
            },
            {
                "from_name": "confidence",
                "to_name": "contexts",
                "type": "rating",
                "value": {"rating": 4},
            },
        ],  # fmt: skip
    }


def _setup_two_features(ws, fake_ls):
    """Features 3 and 4 pushed as tasks 100 and 101, each answered once (violence, fraud)."""
    key = f"{fake_ls.url}#{PROJECT}"
    fake_ls.tasks = [
        {"id": 100, "data": _task(3)["data"],
         "annotations": [_annotation(1, 1, "violence", at="2026-12-01T10:00:00Z")]},
        {"id": 101, "data": _task(4)["data"],
         "annotations": [_annotation(2, 2, "fraud", at="2026-12-01T10:00:00Z")]},
    ]  # fmt: skip
    with session_scope(ws.engine) as session:
        for feature, task_id in ((3, 100), (4, 101)):
            session.add(LabelTask(project=key, sae_id=SAE, feature=feature, task_id=task_id,
                                  batch=1, strategy="test"))  # fmt: skip
    config = ClientConfig(url=fake_ls.url, retries=0, timeout=5)
    first = pull(ws, config=config, retrain=False, progress=False)
    assert first.new == 2 and first.features_labeled == 2
    with Session(ws.engine) as session:
        labels = human_labels(session, SAE)
        assert {f: e.concepts for f, e in labels.items()} == {3: ["violence"], 4: ["fraud"]}
    return config


def test_answers_that_become_invalid_withdraw_the_label(ws, fake_ls):
    config = _setup_two_features(ws, fake_ls)
    # the only answer to feature 3 is turned into a skip (cancelled) in Label Studio
    fake_ls.tasks[0]["annotations"] = [
        _annotation(1, 1, "", cancelled=True, at="2026-12-01T11:00:00Z")
    ]
    again = pull(ws, config=config, retrain=False, progress=False)
    assert again.updated == 1 and again.invalid == 1
    with Session(ws.engine) as session:
        labels = human_labels(session, SAE)
        assert set(labels) == {4}  # feature 3 is unlabeled again
        (old,) = session.exec(select(Explanation).where(Explanation.feature == 3)).all()
        assert old.status == "withdrawn" and "no valid answer" in old.details["reason"]
    # a new valid answer brings the label back (the same row, accepted again)
    fake_ls.tasks[0]["annotations"].append(_annotation(3, 2, "terror", at="2026-12-01T12:00:00Z"))
    pull(ws, config=config, retrain=False, progress=False)
    with Session(ws.engine) as session:
        rows = session.exec(select(Explanation).where(Explanation.feature == 3)).all()
        assert [(r.status, r.concepts) for r in rows] == [("accepted", ["terror"])]


def test_annotations_deleted_in_label_studio_are_removed(ws, fake_ls):
    config = _setup_two_features(ws, fake_ls)
    fake_ls.tasks[1]["annotations"] = []  # the answer to feature 4 is deleted in Label Studio
    again = pull(ws, config=config, retrain=False, progress=False)
    with Session(ws.engine) as session:
        assert [a.annotation_id for a in session.exec(select(Annotation))] == [1]
        assert set(human_labels(session, SAE)) == {3}
        (gone,) = session.exec(select(Explanation).where(Explanation.feature == 4)).all()
        assert gone.status == "withdrawn"
    assert again.deleted == 1 and again.features_labeled == 1
    assert pull(ws, config=config, retrain=False, progress=False).deleted == 0  # converged


def _human(feature: int, concepts: list[str], at: str, version: str | None = None) -> Explanation:
    from datetime import datetime

    return Explanation(sae_id=SAE, feature=feature, source="human", status="accepted",
                       concepts=concepts, text=concepts[0], model_version=version,
                       created_at=datetime.fromisoformat(f"{at}+00:00"))  # fmt: skip


def test_one_rule_for_a_features_human_label(ws):
    """Two accepted human labels of one feature, the newer stored first: the explainer's gold
    set, the learner's labels, the shown label and queries.human_labels all take the newer."""
    from active_learning.learner import _gold
    from safesail.db.queries import best_accepted
    from safesail.explainer.materials import gold_labels

    with session_scope(ws.engine) as session:
        session.add(_human(3, ["fraud"], "2026-12-01T12:00:00"))  # newer, lower id
        session.flush()
        session.add(_human(3, ["violence"], "2026-12-01T09:00:00"))  # older, higher id
    values = ws.taxonomy.label_values()
    with Session(ws.engine) as session:
        assert human_labels(session, SAE)[3].concepts == ["fraud"]
        assert gold_labels(session, SAE)[3].concepts == ["fraud"]
        assert _gold(session, SAE, values) == {3: "fraud"}
        assert best_accepted(session, SAE)[3].concepts == ["fraud"]


def test_pull_updates_the_label_the_rule_picks(ws, fake_ls):
    """Adjudication rewrites the feature's current label (the latest of its project), so the
    gold set shows the pulled answer, not a stale newer row."""
    key = f"{fake_ls.url}#{PROJECT}"
    with session_scope(ws.engine) as session:
        session.add(_human(3, ["violence"], "2026-12-01T09:00:00", key))  # older, lower id
        session.flush()
        session.add(_human(3, ["fraud"], "2026-12-01T12:00:00", key))  # newer, higher id
        session.add(LabelTask(project=key, sae_id=SAE, feature=3, task_id=100, batch=1,
                              strategy="test"))  # fmt: skip
    fake_ls.tasks = [
        {"id": 100, "data": _task(3)["data"],
         "annotations": [_annotation(1, 1, "terror", at="2026-12-01T13:00:00Z")]},
    ]  # fmt: skip
    pull(ws, config=ClientConfig(url=fake_ls.url, retries=0, timeout=5), retrain=False)
    with Session(ws.engine) as session:
        assert human_labels(session, SAE)[3].concepts == ["terror"]
