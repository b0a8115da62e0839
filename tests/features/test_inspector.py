"""The token inspector against a direct residual capture + SAE encode."""

from __future__ import annotations

import pytest
import torch

from safesail.db.tables import Explanation, session_scope
from safesail.errors import SafesailError
from safesail.features.inspector import Inspector, safety_features
from safesail.model.saes import load_sae
from tests.conftest import copy_workspace


@pytest.fixture(scope="module")
def explained_ws(triaged_ws, tmp_path_factory, lm):
    ws = copy_workspace(triaged_ws, tmp_path_factory.mktemp("inspect") / "ws", lm)
    with session_scope(ws.engine) as session:  # a non-candidate with an accepted safety label
        session.add(
            Explanation(
                sae_id=ws.selected_sae,
                feature=0,
                source="human",
                status="accepted",
                concepts=["violence"],
                text="knives and stabbing",
                author="alice",
            )
        )
    return ws


def test_inspector_matches_direct_encode(explained_ws, lm):
    ws = explained_ws
    features = safety_features(ws.engine, ws.selected_sae)
    assert features and features[0].explanation == "knives and stabbing"
    inspector = Inspector.load(ws.engine, lm)
    text = "He grabbed a knife and threatened to hack the bank server."
    result = inspector.inspect(text)

    record = next(r for r in ws.saes() if r.id == ws.selected_sae)
    ids = lm.tokenize([text], 256)[0]
    with torch.inference_mode():
        acts = load_sae(record).encode(lm.residuals([ids], [record.layer])[record.layer])
    assert [t.token for t in result] == lm.decode_tokens(ids)
    n_active = 0
    for pos, token in enumerate(result):
        expected = {f: float(acts[pos, f]) for f in features if float(acts[pos, f]) > 0}
        assert {t.feature for t in token.features} == set(expected)
        for t in token.features:
            assert t.activation == pytest.approx(expected[t.feature], rel=1e-5)
            assert t.normalised == pytest.approx(t.activation / features[t.feature].scale)
        norms = [t.normalised for t in token.features]
        assert norms == sorted(norms, reverse=True)
        n_active += len(token.features)
    assert n_active > 0
    strong = inspector.inspect(text, min_normalised=0.5)
    assert all(t.normalised >= 0.5 for tok in strong for t in tok.features)
    assert sum(len(t.features) for t in strong) < n_active


def test_inspector_needs_a_selected_sae(trained_ws, lm):
    with pytest.raises(SafesailError, match="no SAE selected"):
        Inspector.load(trained_ws.engine, lm)
