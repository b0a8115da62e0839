"""The texts' maxima read a block of features at a time (`StoredTextMaxima`) against the whole
matrix stacked from the chunks at once, as selection, triage and the explainer read it before:
the blocks and columns entry for entry, then select, triage and the explainer's materials row
for row, under a budget so small that every scan takes dozens of blocks and passes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sqlmodel import Session, select

from safesail.collection import chunks
from safesail.collection.chunks import ENTRY_BYTES, StoredTextMaxima, stored_chunks
from safesail.config import WorkspaceConfig
from safesail.db.tables import Feature, SaeRecord, corpus_concepts, get_meta
from safesail.errors import SafesailError
from safesail.explainer.config import ExplainConfig
from safesail.explainer.materials import materials
from safesail.selection.config import SelectionConfig
from safesail.selection.contrastive import (
    ContrastiveConfig,
    corpus_pair_texts,
    corpus_pairs,
    pre_explanation,
)
from safesail.selection.score import score_sae
from safesail.triage.text import feature_selectivity
from safesail.workspace import Workspace
from tests.conftest import TINY_SPECS, copy_workspace

SMALL = 40
"""Text maxima per block: a few features each, so every scan takes many blocks."""
_PAIRS = ContrastiveConfig(min_pairs=5)


def _plain(value: object) -> object:
    """Nested tuples, lists and arrays as plain lists, to compare materials exactly."""
    if isinstance(value, np.ndarray):
        return [value.dtype.str, value.tolist()]
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _whole(ws: Workspace, sae_id: str) -> sp.csr_matrix:
    """Every text's maxima stacked at once: what the steps read before they read blocks."""
    with Session(ws.engine) as session:
        n_chunks = len(get_meta(session, "chunk_plan"))
    parts = [texts for _, _, texts in stored_chunks(ws.engine, sae_id, n_chunks, tokens=False)]
    return sp.vstack(parts).tocsr()


def _passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every read of the chunks (one element per pass)."""
    seen: list[int] = []
    real = chunks.stored_chunks

    def counting(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunks, "stored_chunks", counting)
    return seen


def test_blocks_and_columns_are_the_whole_matrix(trained_ws, monkeypatch):
    sae_id = TINY_SPECS[2].sae_id
    whole = _whole(trained_ws, sae_id)
    passes = _passes(monkeypatch)
    small = StoredTextMaxima(trained_ws.engine, sae_id, SMALL * ENTRY_BYTES)
    assert small.shape == whole.shape
    assert np.array_equal(small.entries(), np.diff(whole.tocsc().indptr))
    blocks = list(small.feature_blocks())
    assert len(blocks) > 10 and [s for s, _ in blocks][0] == 0
    # over the budget only where one feature alone is
    assert all(b.nnz <= max(SMALL, np.diff(b.indptr).max()) for _, b in blocks)
    assert (sp.hstack([b for _, b in blocks]).tocsr() != whole).nnz == 0
    # counting once and writing the blocks once: the chunks are read twice for the whole scan
    assert len(passes) == 2
    requests = [np.array([5, 2]), np.array([2]), np.arange(30, 60), np.array([], dtype=int)]
    for request, got in zip(requests, small.columns(requests), strict=True):
        assert (sp.csr_matrix(got) != whole[:, request]).nnz == 0
    big = StoredTextMaxima(trained_ws.engine, sae_id, 2**30)
    ((start, block),) = big.feature_blocks()
    assert start == 0 and (block.tocsr() != whole).nnz == 0


def test_statistics_do_not_depend_on_the_blocks(trained_ws):
    """Score, selectivity and pre-explanation figures over many blocks are those of the
    whole matrix, to the last bit."""
    sae_id = TINY_SPECS[2].sae_id
    small = StoredTextMaxima(trained_ws.engine, sae_id, SMALL * ENTRY_BYTES)
    whole = _whole(trained_ws, sae_id)
    with Session(trained_ws.engine) as session:
        by_text = corpus_concepts(session)
    labels = [by_text[t] for t in small.text_ids]
    safety = trained_ws.taxonomy.safety_concepts()
    config = SelectionConfig(min_texts=5)
    assert score_sae(small, labels, safety, config) == score_sae(whole, labels, safety, config)
    for got, expected in zip(
        feature_selectivity(small, labels, safety, 0.5, "rest"),
        feature_selectivity(whole, labels, safety, 0.5, "rest"),
        strict=True,
    ):
        assert np.array_equal(got, expected) if isinstance(got, np.ndarray) else got == expected
    pairs, _ = corpus_pairs(corpus_pair_texts(trained_ws.engine, small.text_ids), safety, _PAIRS)
    assert pairs and pre_explanation(small, pairs, _PAIRS) == pre_explanation(whole, pairs, _PAIRS)


def test_select_triage_and_materials_are_the_same_under_a_small_budget(
    triaged_ws, tmp_path, lm, monkeypatch
):
    """The shared triaged workspace (the default budget: one block) against a copy selected,
    triaged and given materials again with a budget of a few features per block."""
    copy = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    tiny = Workspace(
        WorkspaceConfig(copy.config.workspace, memory_budget_mb=SMALL * ENTRY_BYTES / 2**20), lm=lm
    )
    with Session(tiny.engine) as session:  # no score to read back: select scores again
        for record in session.exec(select(SaeRecord)).all():
            record.selection = None
            session.add(record)
        session.commit()
    passes = _passes(monkeypatch)
    tiny.select(config=SelectionConfig(rank_by="score"))
    assert len(passes) > 3  # counted, written to blocks, read back for the probes
    tiny.triage()

    def stored(ws: Workspace) -> tuple[list, list]:
        with Session(ws.engine) as session:
            saes = [
                (r.id, r.selected, r.selection_score, r.selection)
                for r in session.exec(select(SaeRecord).order_by(SaeRecord.id))
            ]
            features = [
                (f.sae_id, f.index, f.candidate, f.triage_reason, f.concept, f.safety_score)
                + (f.auroc, f.precision)
                for f in session.exec(select(Feature).order_by(Feature.sae_id, Feature.index))
            ]
        return saes, features

    assert stored(tiny) == stored(triaged_ws)
    sae_id = triaged_ws.selected_sae
    with Session(triaged_ws.engine) as session:
        wanted = session.exec(
            select(Feature.index).where(Feature.sae_id == sae_id, Feature.examples.is_not(None))
        ).all()[:12]
    concepts = list(triaged_ws.taxonomy.concepts)
    config = ExplainConfig()
    small = materials(tiny, sae_id, wanted, config, concepts)
    assert len(small) == len(wanted) > 5
    assert _plain(small) == _plain(materials(triaged_ws, sae_id, wanted, config, concepts))


def test_a_budget_must_be_positive_and_an_uncollected_sae_is_refused(trained_ws, tmp_path):
    with pytest.raises(ValueError, match="memory_budget_mb must be a number > 0"):
        WorkspaceConfig(tmp_path, memory_budget_mb=0)
    with pytest.raises(SafesailError, match="no collected activations"):
        StoredTextMaxima(trained_ws.engine, "no-such-sae", 2**20)
