"""The peers' own code reads our exports: delphi's `explanation_loader` (eai-delphi 0.1.3) reads
the delphi export, and the `neuronpedia` 1.2.1 client's `FeatureRequest.upload_batch`, fed the
Neuronpedia export through its own request types, posts exactly the batch we wrote (to a local
HTTP server standing in for neuronpedia.org). Both packages are installed `--no-deps` by
`make install` (delphi pulls vllm); only delphi's loader module and what it imports are loaded,
with stubs for the package `__init__`s that import vllm and the collection stack."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete
from sqlmodel import Session, select

from exports.api import export_gold, import_file
from exports.formats import one_per_feature
from exports.gather import gather_records
from exports.synthetic import populate
from safesail.db.tables import Explanation, Feature, Score, session_scope
from safesail.features.examples import TOP, feature_examples
from tests.conftest import copy_workspace, skip_or_fail


@pytest.fixture(scope="module")
def labeled_ws(triaged_ws, tmp_path_factory, lm):
    ws = copy_workspace(triaged_ws, tmp_path_factory.mktemp("peers") / "ws", lm)
    populate(ws.engine, ws.selected_sae, ws.taxonomy.safety_concepts(), features=list(range(12)))
    return ws


def _find(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail(f"{package} is not installed (make install: pip install --no-deps)")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture
def delphi_loader():
    """delphi.explainers.explainer (the real file) with its package `__init__`s stubbed: those
    import vllm, faiss and the activation cache, none of which the loader uses. blobfile and
    orjson are imported by delphi.latents.latents for LatentRecord.save only."""
    root = _find("delphi")
    before = set(sys.modules)
    stubs = {
        name: types.ModuleType(name)
        for name in ("delphi.explainers", "delphi.clients", "delphi.latents", "blobfile", "orjson")
    }
    for name, module in stubs.items():
        if name.startswith("delphi."):
            module.__path__ = [str(root / name.split(".")[1])]
        sys.modules.setdefault(name, module)
    try:
        yield (
            importlib.import_module("delphi.explainers.explainer"),
            importlib.import_module("delphi.latents.latents"),
        )
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("delphi", "blobfile", "orjson"):
                del sys.modules[name]


def test_delphi_explanation_loader_reads_our_export(labeled_ws, delphi_loader, tmp_path):
    explainer, latents = delphi_loader
    manifest = export_gold(labeled_ws, "delphi", tmp_path, include_unaccepted=True)
    chosen = one_per_feature(gather_records(labeled_ws.engine, include_unaccepted=True))
    module = {sae: m for m, sae in manifest["modules"].items()}[labeled_ws.selected_sae]
    folder = str(tmp_path / "explanations")

    async def load(index: int) -> str:
        record = latents.LatentRecord(latents.Latent(module, index))
        return (await explainer.explanation_loader(record, folder)).explanation

    assert len(chosen) == 12
    for r in chosen:
        assert asyncio.run(load(r.index)) == r.explanation
    assert asyncio.run(load(63)) == "No explanation found"  # a latent we did not export


class Upload:
    """A local stand-in for neuronpedia.org's API: records each JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []
        upload = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                upload.bodies.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _np_features(payload: dict) -> list:
    """The batch as the neuronpedia package's own types (what its users build)."""
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation as NpExplanation
    from neuronpedia.np_feature import Feature as NpFeature

    model, source = payload["modelId"], payload["source"]
    return [
        NpFeature(
            modelId=model,
            source=source,
            index=f["index"],
            density=f["density"],
            explanations=[
                NpExplanation(model, source, f["index"], e["text"], e["methodName"], e["modelName"])
                for e in f["explanations"]
            ],
            activations=[
                Activation(model, source, f["index"], a["tokens"], a["values"])
                for a in f["activations"]
            ],
        )
        for f in payload["features"]
    ]


def test_neuronpedia_export_is_what_its_client_uploads(labeled_ws, triaged_ws, tmp_path, lm):
    _find("neuronpedia")
    from neuronpedia.requests.feature_request import FeatureRequest

    out = tmp_path / "np"
    manifest = export_gold(labeled_ws, "neuronpedia", out, include_unaccepted=True)
    batches = sorted((out / "upload-batches").glob("batch-*.json"))
    assert [f"upload-batches/{b.name}" for b in batches] == manifest["files"][:-1]
    upload = Upload()
    try:
        for batch in batches:
            payload = json.loads(batch.read_text())
            request = FeatureRequest(api_key="test-key")
            request.BASE_URL = upload.url
            request.upload_batch(payload["modelId"], payload["source"], _np_features(payload))
            path, body = upload.bodies[-1]
            assert path == "/api/feature/upload-batch"
            assert body == payload  # byte for byte what the client sends for our batch
    finally:
        upload.close()

    records = gather_records(labeled_ws.engine, include_unaccepted=True)
    (payload,) = (json.loads(b.read_text()) for b in batches)
    assert payload["modelId"] == labeled_ws.model_name
    with Session(labeled_ws.engine) as session:
        rows = {
            f.index: f
            for f in session.exec(select(Feature).where(Feature.sae_id == labeled_ws.selected_sae))
        }
    assert sorted(f["index"] for f in payload["features"]) == sorted({r.index for r in records})
    for f in payload["features"]:
        row = rows[f["index"]]
        assert f["density"] == pytest.approx(row.firing_rate)
        tops = [e for e in feature_examples(row) if e.kind == TOP]
        assert len(f["activations"]) == len(tops)
        for a, e in zip(f["activations"], tops, strict=True):
            assert len(a["tokens"]) == len(a["values"]) == len(e.activations)
            assert max(a["values"]) == pytest.approx(e.max_act, abs=1e-3)
        assert len(f["explanations"]) == sum(r.index == f["index"] for r in records)

    # round trip: the batches (and scores.jsonl) import back with source, status and scores
    blank = copy_workspace(triaged_ws, tmp_path / "blank", lm)
    with session_scope(blank.engine) as session:
        session.execute(delete(Score))
        session.execute(delete(Explanation))
    report = import_file(blank, "neuronpedia", out, trust=True)
    assert report.skipped == [] and report.added == len(records)
    back = gather_records(blank.engine, include_unaccepted=True, include_priors=True)

    def key(r):
        scores = sorted((s["scorer"], round(s["value"], 6), s["model"]) for s in r.scores)
        return (r.sae_id, r.index, r.layer, r.explanation, r.source, r.status, r.author, scores)

    assert sorted(map(key, back)) == sorted(map(key, records))
    assert np.isfinite([s["value"] for r in back for s in r.scores]).all()
