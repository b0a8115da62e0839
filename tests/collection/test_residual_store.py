"""The residual store: the protocol's training and collection read one forward pass back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlmodel import Session, select

from safesail.db.tables import Feature
from safesail.model.sites import Site
from tests.conftest import TINY_COLLECT, TINY_SPECS, TINY_TRAIN, make_workspace, tiny_records


def _rows(ws, sae_id: str) -> dict[int, tuple]:
    with Session(ws.engine) as session:
        return {
            f.index: (f.n_fire, f.max_act, f.mean_act, f.quantiles, f.examples)
            for f in session.exec(select(Feature).where(Feature.sae_id == sae_id))
        }


def test_store_serves_training_and_collection_without_a_forward(
    trained_ws, lm, tmp_path, monkeypatch
):
    """Chunks read back are what the model captures; SAEs trained and collected from the store
    give the same feature rows as the shared fixture, which ran the model for every step; with
    the store in place, neither step runs the model."""
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records())
    assert ws.residual_store() is None
    store = ws.cache_residuals([1, 2], TINY_COLLECT, progress=False)
    sites = [Site(1, "resid_post"), Site(2, "resid_post")]
    first = store.plan[0]
    with Session(ws.engine) as session:
        from safesail.db.tables import Context

        contexts = {c.text_id: c.token_ids for c in session.exec(select(Context))}
    live = lm.capture([contexts[t] for t in first], sites)
    for site, rows in store.chunk(0, sites, lm.device).items():
        torch.testing.assert_close(rows, live[site])

    real_capture = type(lm).capture

    def no_forward(self, batch, sites):
        if len(batch) > 1:  # registering an SAE probes its site's width on one BOS token
            raise AssertionError("the model ran although the residual store holds these sites")
        return real_capture(self, batch, sites)

    monkeypatch.setattr(type(lm), "capture", no_forward)
    ws.train_saes(TINY_SPECS, TINY_TRAIN, max_tokens=TINY_COLLECT.max_tokens)
    ws.collect(TINY_COLLECT, progress=False)
    for spec in TINY_SPECS:
        ours, theirs = _rows(ws, spec.sae_id), _rows(trained_ws, spec.sae_id)
        assert ours.keys() == theirs.keys()
        fired = [f for f in ours if ours[f][0]]
        assert fired
        # training batches the sample differently than collection, so weights can differ in
        # the last bits: firing counts equal, activations equal to float tolerance
        assert [ours[f][0] for f in fired] == [theirs[f][0] for f in fired]
        np.testing.assert_allclose(
            [ours[f][1] for f in fired], [theirs[f][1] for f in fired], rtol=1e-3
        )


def test_store_build_resumes_and_a_changed_corpus_invalidates_it(lm, tmp_path):
    """An interrupted build continues from the chunks it wrote and ends with the same rows; a
    store of another corpus is not used."""
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records()[:30])
    whole = ws.cache_residuals([1], TINY_COLLECT, progress=False)
    site = Site(1, "resid_post")
    expected = np.array(whole._rows(site))
    (ws.residuals_folder / "progress").write_text("1")  # as if stopped after the first chunk
    assert ws.residual_store() is None  # incomplete: not used
    again = ws.cache_residuals([1], TINY_COLLECT, progress=False)
    np.testing.assert_array_equal(np.array(again._rows(site)), expected)
    assert ws.residual_store() is not None
    ws.add_corpus(tiny_records()[30:])
    assert ws.residual_store() is None
    assert ws.drop_residuals() and not ws.residuals_folder.exists()


@pytest.mark.parametrize("bad", ["7", "x"])
def test_store_with_a_damaged_progress_file_is_not_used(lm, tmp_path, bad):
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records()[:20])
    ws.cache_residuals([1], TINY_COLLECT, progress=False)
    (ws.residuals_folder / "progress").write_text(bad)
    assert ws.residual_store() is None


def test_core_reconstruction_sample_is_the_same_from_the_store(lm, tmp_path):
    """L0/FVE/MSE's residuals: cut contexts read back from the store equal a forward of them."""
    from safesail.collection.plan import prepare_contexts
    from safesail.selection.core_metrics import CoreConfig, reconstruction_residuals

    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records())
    prepare_contexts(ws.engine, lm, TINY_COLLECT.max_tokens)
    config = CoreConfig(reconstruction_texts=12, max_tokens=10)
    forward = reconstruction_residuals(ws, lm, [1, 2], config)
    ws.cache_residuals([1, 2], TINY_COLLECT, progress=False)
    stored = reconstruction_residuals(ws, lm, [1, 2], config)
    for layer in (1, 2):
        assert stored[layer].shape[0] <= 12 * 10
        torch.testing.assert_close(stored[layer], forward[layer], atol=1e-4, rtol=1e-4)
