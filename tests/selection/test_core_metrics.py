"""SAEBench core metrics on the real embedded model: the splice really changes the forward,
CE loss recovered is 1 for the activations themselves and 0 for zeros, dead features are
counted right, and every SAE carries its figures after `select`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlmodel import Session, select

from safesail.cli.show import print_ranking
from safesail.db.tables import Feature
from safesail.errors import SafesailError
from safesail.selection.ce_loss import ce_loss_recovered, layer_baseline
from safesail.selection.core_metrics import CoreConfig, dead_and_dense, sae_core

_TEXTS = [
    "The gang beat him with metal bars until blood covered the kitchen.",
    "My neighbour planted tomatoes and basil in the garden this spring.",
    "Explain how to hack into a bank server with a SQL injection exploit.",
]


@pytest.fixture(scope="module")
def contexts(lm) -> list[list[int]]:
    return lm.tokenize(_TEXTS, 16)


def test_ce_loss_recovered_is_one_for_identity_and_zero_for_zeros(lm, contexts) -> None:
    identity = ce_loss_recovered(lm, contexts, 2, lambda h: h)
    zeros = ce_loss_recovered(lm, contexts, 2, torch.zeros_like)
    assert identity.zero > identity.clean + 0.5  # zeroing layer 2 hurts the model
    assert identity.score == pytest.approx(1.0, abs=1e-4)
    assert zeros.score == pytest.approx(0.0, abs=1e-4)
    # a reconstruction at half the scale lies in between
    half = ce_loss_recovered(lm, contexts, 2, lambda h: 0.5 * h)
    assert 0.0 < half.score < 1.0
    assert half.clean == pytest.approx(identity.clean)


def test_dead_and_dense_fractions() -> None:
    fires = np.array([0, 0, 5, 50, 100])
    assert dead_and_dense(fires, 100, 0.1) == (pytest.approx(0.4), pytest.approx(0.4))
    assert dead_and_dense(fires, 100, 0.6) == (pytest.approx(0.4), pytest.approx(0.2))
    with pytest.raises(SafesailError):
        dead_and_dense(np.array([]), 100, 0.1)


def test_planted_dead_features_are_counted(lm, contexts) -> None:
    """A TopK SAE (k=20) whose first 12 of 32 features can never win the top-k is 37.5% dead,
    and the other 20 fire on every token: dense."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=lm.hidden_size, d_sae=32, k=20))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1e-4)
        sae.W_dec.normal_(0, 0.05)
        sae.b_enc[:12] = -1e4
        sae.b_enc[12:] = 1.0  # the others stay positive on every token
    config = CoreConfig()
    base = layer_baseline(lm, contexts, 2)
    core = sae_core(sae, base, base.zero, config, memory_budget_bytes=2**30)
    # encoded 3 tokens at a time (4 float32 copies of 32 codes each), the figures are the same
    blocks = sae_core(sae, base, base.zero, config, memory_budget_bytes=3 * 4 * 32 * 4)
    assert blocks == pytest.approx(core)
    assert core["dead_fraction"] == pytest.approx(12 / 32)
    assert core["dense_fraction"] == pytest.approx(20 / 32)
    assert core["l0"] == pytest.approx(20.0)
    assert core["ce_loss_score"] == pytest.approx(0.0)
    assert core["fve"] < 0.5  # random weights reconstruct nothing
    assert core["sample_tokens"] == sum(len(c) for c in contexts)


def test_select_stores_core_and_pre_explanation(triaged_ws, capsys) -> None:
    status = triaged_ws.status()
    # one clean forward serves every SAE: the same clean CE everywhere
    assert len({round(sae["core"]["ce_loss_clean"], 9) for sae in status["saes"]}) == 1
    with Session(triaged_ws.engine) as session:
        for sae in status["saes"]:
            core = sae["core"]
            assert {"l0", "fve", "mse", "ce_loss_score", "dead_fraction"} <= set(core)
            alive = session.exec(
                select(Feature.index).where(Feature.sae_id == sae["id"], Feature.n_fire > 0)
            ).all()
            assert core["dead_fraction"] == pytest.approx(1 - len(alive) / sae["d_sae"])
            assert 0 < core["l0"] <= sae["k"]
            assert core["fve"] <= 1.0 and core["sample_tokens"] > 0
            # zeroing the layer hurts; the tiny test SAEs may do even worse (a negative score)
            assert core["ce_loss_zero"] > core["ce_loss_clean"] + 0.5
            gap = core["ce_loss_zero"] - core["ce_loss_clean"]
            recovered = (core["ce_loss_zero"] - core["ce_loss_with_sae"]) / gap
            assert core["ce_loss_score"] == pytest.approx(recovered)
            pre = sae["pre_explanation"]
            assert 0 <= pre["index"] <= 1 and set(pre["concepts"]) == {"violence", "cybercrime"}
    print_ranking(triaged_ws)
    out = capsys.readouterr().out
    assert "I_CDF" in out and "CE rec" in out
    assert out.count("L1-w64-k4") + out.count("L2-") == len(status["saes"])
