"""Every sae-lens architecture safesail reads, encoded by the memory-bounded encode and
checked against the SAE's own `sae.encode`, on tiny SAEs saved in sae-lens format here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError
from safesail.model.encode import encode_csr

D_IN, D_SAE = 16, 96


def _randomise(sae: torch.nn.Module, seed: int) -> None:
    """Random weights and biases with mixed signs: some features fire, most do not."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.5 if "b_" in name else 1.0))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(D_SAE, generator=gen) * 2)


def _save(kind: str, path: Path, d_in: int = D_IN, hook: str = "blocks.2.hook_resid_post") -> Path:
    """A tiny SAE of `kind` saved in sae-lens format (BatchTopK as sae-lens saves it: a
    JumpReLU SAE holding its batch threshold)."""
    import sae_lens as sl

    base = dict(d_in=d_in, d_sae=D_SAE, dtype="float32", device="cpu")
    if kind == "batchtopk":
        sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(k=6, **base))
        _randomise(sae, 5)
        sae.topk_threshold = torch.tensor(1.0, dtype=torch.double)
        sae.cfg.metadata.hook_name = hook
        sae.save_inference_model(path)
        return path
    sae = {
        "standard": lambda: sl.StandardSAE(sl.StandardSAEConfig(**base)),
        "jumprelu": lambda: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**base)),
        "topk": lambda: sl.TopKSAE(sl.TopKSAEConfig(k=6, **base)),
        "topk-rescaled": lambda: sl.TopKSAE(
            sl.TopKSAEConfig(k=6, rescale_acts_by_decoder_norm=True, **base)
        ),
        "gated": lambda: sl.GatedSAE(sl.GatedSAEConfig(**base)),
    }[kind]()
    _randomise(sae, len(kind))
    sae.cfg.metadata.hook_name = hook
    sae.save_model(path)
    return path


def _record(path: Path) -> SaeRecord:
    cfg = json.loads((path / "cfg.json").read_text())
    return SaeRecord(
        id=path.name,
        source="disk",
        path=str(path),
        layer=2,
        d_in=cfg["d_in"],
        d_sae=cfg["d_sae"],
        architecture=cfg["architecture"],
    )


KINDS = ["standard", "jumprelu", "topk", "topk-rescaled", "gated", "batchtopk"]


@pytest.mark.parametrize("kind", KINDS)
def test_bounded_encode_matches_sae_encode(kind, tmp_path):
    """Same activations as sae.encode, whether one block holds everything or the encode is
    split over both tokens and features (tiny block budget)."""
    from safesail.model.saes import load_sae

    sae = load_sae(_record(_save(kind, tmp_path / kind)), device="cpu")
    expected_arch = "jumprelu" if kind == "batchtopk" else kind.split("-")[0]
    assert sae.cfg.architecture() == expected_arch
    x = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    with torch.inference_mode():
        expected = sae.encode(x).float().numpy()
    assert 0 < (expected > 0).mean() < 0.6  # a real test: some fire, most do not
    for budget in (1 << 24, 7 * 13):  # one block; 7 tokens x 13 features
        got = encode_csr(sae, x, block_elements=budget)
        assert got.has_sorted_indices and got.dtype == np.float32
        assert (got.data > 0).all()
        np.testing.assert_allclose(got.toarray(), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_encode_matches_sae_encode(tmp_path):
    from safesail.model.saes import load_sae

    sae = load_sae(_record(_save("jumprelu", tmp_path / "j")), device="cpu", dtype="bfloat16")
    assert sae.W_enc.dtype == torch.bfloat16
    x = torch.randn(30, D_IN, generator=torch.Generator().manual_seed(2)) * 2
    with torch.inference_mode():
        expected = sae.encode(x).float().numpy()
    got = encode_csr(sae, x, block_elements=5 * 11).toarray()
    assert (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_sae_add_accepts_every_architecture(kind, lm, tmp_path):
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "ws", lm)
    sae_id = ws.add_sae(_save(kind, tmp_path / kind, d_in=lm.hidden_size), sae_id="s")
    (record,) = ws.saes()
    assert (record.id, record.layer, record.hook) == (sae_id, 2, "blocks.2.hook_resid_post")
    assert record.architecture == ("jumprelu" if kind == "batchtopk" else kind.split("-")[0])


def test_unsupported_architecture_is_one_line(lm, tmp_path):
    from tests.conftest import make_workspace

    path = _save("standard", tmp_path / "s", d_in=lm.hidden_size)
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "transcoder"}))
    ws = make_workspace(tmp_path / "ws", lm)
    with pytest.raises(SafesailError, match="architecture 'transcoder' is not supported"):
        ws.add_sae(path)
    assert ws.saes() == []


def test_training_the_selected_configuration_needs_a_selected_topk_sae(lm, tmp_path):
    """Safe-SAIL's protocol trains the chosen configuration at other layers: with nothing
    selected, or a selected SAE whose architecture is not trained here, a one-line error and
    nothing new."""
    from safesail.db.tables import session_scope
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_sae(_save("jumprelu", tmp_path / "j", d_in=lm.hidden_size), sae_id="j")
    with pytest.raises(SafesailError, match="no SAE selected"):
        ws.train_configuration([1])
    with session_scope(ws.engine) as session:
        record = session.get(SaeRecord, "j")
        record.selected = True
        session.add(record)
    with pytest.raises(SafesailError, match="is a jumprelu SAE; only TopK"):
        ws.train_configuration([1])
    assert [r.id for r in ws.saes()] == ["j"]


def test_demo_rows_identical_to_dense_encode(trained_ws, lm, tmp_path, monkeypatch):
    """The demo's collection gives the same feature rows as the dense sae.encode path that
    collection used before the bounded encode."""
    import scipy.sparse as sp
    from sqlmodel import Session, select

    import safesail.collection.collect as collect_mod
    from safesail.db.tables import Feature
    from tests.conftest import TINY_COLLECT, copy_workspace

    def dense(sae, x):
        with torch.inference_mode():
            return sp.csr_matrix(sae.encode(x).float().clamp_min(0).numpy())

    ws = copy_workspace(trained_ws, tmp_path / "ws", lm)
    with Session(ws.engine) as session:
        for record in session.exec(select(SaeRecord)):
            record.collected = False
            session.add(record)
        session.commit()
    from sqlalchemy import delete

    from safesail.db.tables import ActivationChunk

    with Session(ws.engine) as session:
        session.exec(delete(ActivationChunk))
        session.commit()
    monkeypatch.setattr(collect_mod, "encode_csr", dense)
    ws.collect(TINY_COLLECT, progress=False)

    def rows(w):
        with Session(w.engine) as session:
            fs = session.exec(select(Feature).order_by(Feature.sae_id, Feature.index)).all()
            return [f.model_dump(exclude={"id"}) for f in fs]

    before, after = rows(ws), rows(trained_ws)
    assert len(before) == sum(s.d_sae for s in trained_ws.saes())
    assert before == after
