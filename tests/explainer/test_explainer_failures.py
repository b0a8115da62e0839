"""Bad answers from an LLM endpoint, served over real HTTP by a stdlib double BESIDE the test
against the real embedded server (test_explainer.py): endpoint down, timeouts, 429, non-JSON and
off-taxonomy answers, an empty gold set, a price table missing the model."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select

from safesail.cli.main import main
from safesail.db.contracts import CalibrationReport, HumanQueue, read_record
from safesail.db.tables import Explanation, LlmCall
from safesail.errors import SafesailError
from safesail.explainer.clients import LlmClient, parse_json
from safesail.explainer.config import ExplainConfig, LlmConfig
from safesail.explainer.explainers import ExplanationAnswer, explanation_schema
from safesail.explainer.pipeline import explain
from safesail.taxonomy import Taxonomy
from tests.conftest import copy_workspace

VALID = {"concepts": ["violence"], "confidence": 7, "explanation": "Violent acts with weapons."}


class Double:
    """An OpenAI-compatible /v1/chat/completions that answers from a script of behaviours:
    "ok" (a valid answer for the asked step), "429", "slow", "text", "offtaxonomy"."""

    def __init__(self, script: list[str], default: str = "ok") -> None:
        self.script, self.default, self.requests = list(script), default, 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.requests += 1
                what = double.script.pop(0) if double.script else double.default
                if what == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "slow down"}}')
                    return
                if what == "slow":
                    time.sleep(1.5)
                if what == "html":  # a web server, not an LLM, at that port
                    page = b"<html><body>It works!</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self._answer(double.content(what, body["messages"]))

            def _answer(self, content: str) -> None:
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "double",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def content(what: str, messages: list[dict]) -> str:
        if what == "text":
            return "I think this feature is about violence."
        if what == "offtaxonomy":
            return json.dumps({**VALID, "concepts": ["aliens"]})
        if "explain a feature" in messages[0]["content"]:
            # like a model that follows the prompt: quote a marked token when there is one
            answer = dict(VALID)
            if marked := re.search(r"<<(.+?)>>", messages[-1]["content"]):
                answer["explanation"] = f'Fires on "{marked[1]}": violent acts with weapons.'
            return json.dumps(answer).replace(" with", "\n with")
        n = len(re.findall(r"^\d+\. ", messages[-1]["content"], flags=re.M))
        return json.dumps({"answers": [1] * n})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def double():
    made: list[Double] = []

    def make(script: list[str], default: str = "ok") -> Double:
        made.append(Double(script, default))
        return made[-1]

    yield make
    for d in made:
        d.close()


@pytest.fixture
def ws(triaged_ws, tmp_path, lm):
    return copy_workspace(triaged_ws, tmp_path / "ws", lm)


def _client(ws, url: str, **llm) -> LlmClient:
    config = LlmConfig(model="double", prices={"double": (1.0, 2.0)}, backoff_s=0.0, **llm)
    return LlmClient(ws.engine, config, url)


LABELS = Taxonomy.load().label_values()


def _ask(client: LlmClient):
    return client.structured(
        [{"role": "system", "content": "explain a feature"}, {"role": "user", "content": "x"}],
        ExplanationAnswer,
        step="explain",
        max_tokens=40,
        schema=explanation_schema(LABELS),
        context={"labels": set(LABELS)},
    )


def _calls(ws) -> list[LlmCall]:
    with Session(ws.engine) as session:
        return list(session.exec(select(LlmCall)))


def test_endpoint_down_is_one_line_error_after_retries(ws):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = _client(ws, f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(SafesailError, match=r"unavailable after 2 tries \(connection failed.*\) — start it or fix --base-url"):
        _ask(client)
    assert _calls(ws) == []


def test_endpoint_answering_html_is_one_line_with_url_and_reply(double, tmp_path):
    from safesail.db.tables import open_db

    engine = open_db(f"sqlite:///{tmp_path / 'calls.db'}")
    d = double([], default="html")
    config = LlmConfig(model="double", prices={"double": (1.0, 2.0)}, backoff_s=0.0)
    with pytest.raises(SafesailError, match=r"127\.0\.0\.1.*not OpenAI-compatible.*It works"):
        _ask(LlmClient(engine, config, d.url))
    with Session(engine) as session:
        assert list(session.exec(select(LlmCall))) == []


def test_timeout_retries_then_gives_up(ws, double):
    d = double([], default="slow")
    client = _client(ws, d.url, timeout_s=0.3, max_retries=1)
    with pytest.raises(SafesailError, match="timed out"):
        _ask(client)
    assert d.requests == 2


def test_rate_limited_then_success_is_paid_once(ws, double):
    d = double(["429", "429"])
    client = _client(ws, d.url, max_retries=3)
    reply = _ask(client)
    assert reply.value.concepts == ["violence"] and d.requests == 3
    assert reply.value.explanation == "Violent acts with weapons."  # raw newline repaired
    (call,) = _calls(ws)
    assert (call.prompt_tokens, call.completion_tokens) == (100, 10)
    assert call.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert _ask(client).value == reply.value and d.requests == 3  # cached: not asked again


def test_off_taxonomy_and_non_json_answers_are_refused_not_stored(ws, double):
    d = double(["offtaxonomy", "text", "offtaxonomy"])
    reply = _ask(_client(ws, d.url, invalid_retries=2))
    assert reply.value is None and reply.attempts == 3 and d.requests == 3
    assert "not a taxonomy label" in reply.reason


def test_non_json_answers_mark_features_failed_and_rerun_is_free(ws, double):
    d = double([], default="text")
    llm = LlmConfig(base_url=d.url, model="double", prices={"double": (0.0, 0.0)})
    report = explain(ws, ExplainConfig(limit=2, ask_unprovable=True), llm, progress=False)
    assert report.failed == report.explained == 2
    with Session(ws.engine) as session:
        rows = list(session.exec(select(Explanation)))
    assert {r.status for r in rows} == {"failed"} and all(r.concepts == [] for r in rows)
    assert all("JSON" in r.details["reason"] for r in rows)
    asked = d.requests
    again = explain(ws, ExplainConfig(limit=2, ask_unprovable=True), llm, progress=False)
    assert again.explained == 0 and d.requests == asked


def test_retry_failed_asks_again_with_new_seeds_and_status_counts_them(ws, double):
    from safesail.status import workspace_status as status

    d = double([], default="text")
    llm = LlmConfig(base_url=d.url, model="double", prices={"double": (0.0, 0.0)})
    assert explain(ws, ExplainConfig(limit=2, ask_unprovable=True), llm, progress=False).failed == 2
    assert status(ws)["labels"]["failed_only"] == 2
    d.default = "ok"  # the endpoint answers well now; the cache still holds the bad answers
    asked = d.requests
    retried = explain(ws, ExplainConfig(limit=2, ask_unprovable=True), llm, progress=False, retry_failed=True)
    assert retried.explained == 2 and retried.failed == 0 and d.requests > asked
    assert status(ws)["labels"]["failed_only"] == 0


def test_unknown_feature_is_an_error(ws, double):
    d = double([])
    llm = LlmConfig(base_url=d.url, model="double", prices={"double": (0.0, 0.0)})
    with pytest.raises(SafesailError, match="999999"):
        explain(ws, ExplainConfig(limit=2, ask_unprovable=True), llm, features=[999999], progress=False)
    assert d.requests == 0


def test_empty_gold_set_refuses_calibration_and_queues_everything(ws, double):
    d = double([])
    llm = LlmConfig(base_url=d.url, model="double", prices={"double": (0.0, 0.0)})
    report = explain(ws, ExplainConfig(limit=2, votes=2, ask_unprovable=True), llm, progress=False)
    assert report.explained == 2 and report.accepted == 0
    with Session(ws.engine) as session:
        meta = read_record(session, CalibrationReport)
        queue = read_record(session, HumanQueue)
    # no learner predictions: one stage, the LLM's, at the whole delta: ln 0.1 / ln 0.9 = 22
    assert [s.name for s in meta.stages] == ["llm"] and meta.needed == 22
    assert "needs at least 22" in meta.error and "has 0" in meta.error
    assert report.queued == meta.routed == len(queue.features) >= 2
    assert sum(q.reason == "not accepted" for q in queue.features) == 2
    assert ws.status()["labels"]["queued_for_humans"] == 2
    assert ws.status()["labels"]["auto_accepted"] == 0


def test_price_table_missing_the_model_fails_before_any_call(ws, double, capsys):
    d = double([])
    llm = LlmConfig(base_url=d.url, model="mystery-model")
    with pytest.raises(SafesailError, match="no price for model 'mystery-model'"):
        explain(ws, ExplainConfig(limit=1, ask_unprovable=True), llm, progress=False)
    code = main(
        ["explain", "--workspace", str(ws.config.workspace), "--base-url", d.url]
        + ["--llm-model", "mystery-model", "--quiet"]
    )
    assert code == 2 and "price table" in capsys.readouterr().err
    assert d.requests == 0 and _calls(ws) == []


def test_parse_json_repairs_what_small_models_break():
    assert parse_json('```json\n{"a": "x\ny"}\n```') == {"a": "x y"}
    assert parse_json('Sure: {"concepts": ["violence"], "explanation": "cut') == {
        "concepts": ["violence"],
        "explanation": "cut",
    }
    with pytest.raises(ValueError):
        parse_json("no json here")


def test_a_commands_server_stops_when_the_command_is_killed(tmp_path):
    """The supervisor of a server started by a command (not `llm up`) stops it once that
    command is gone, even killed with SIGKILL; `sleep` stands in for llama.cpp here (the
    embedded server itself is started and stopped in test_explainer.py)."""
    import signal
    import subprocess
    import sys

    from safesail.procs import start_time

    owner = subprocess.Popen(["sleep", "60"])
    record = tmp_path / "exit.json"
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safesail.explainer.server",
            "--supervise",
            str(record),
            f"{owner.pid}:{start_time(owner.pid)}",
            "sleep",
            "60",
        ]
    )
    time.sleep(1.0)
    assert supervisor.poll() is None  # the owner runs: so does the server
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert supervisor.wait(timeout=15) != 0
    assert json.loads(record.read_text())["returncode"] == -signal.SIGTERM
