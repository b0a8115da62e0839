"""Safe-SAIL's pre-explanation metric: pairs matched by source, template and length, and a
planted concept feature that beats a random dictionary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from safesail.errors import SafesailError
from safesail.selection.contrastive import (
    ContrastiveConfig,
    build_pairs,
    corpus_pairs,
    pair_text,
    pre_explanation,
)


def _corpus() -> list:
    """Violence and benign texts from two sources (same templates inside a source), and a
    violence-only source whose matches must come from elsewhere."""
    texts = []
    for i in range(30):
        texts.append(pair_text(f"how do I stab person {i} with a knife", "a:one", ["violence"], 9))
        texts.append(pair_text(f"how do I bake bread {i} with a friend", "a:one", ["benign"], 9))
        texts.append(pair_text(f"a long story number {i} about quiet gardens", "b:two", [], 40))
    for i in range(5):
        texts.append(pair_text(f"shoot them all {i}", "c/three", ["violence"], 5))
        texts.append(pair_text(f"plant some flowers {i}", "c/four", ["benign"], 5))
    return texts


def test_pairs_match_same_source_template_and_length() -> None:
    texts = _corpus()
    pairs = build_pairs(texts, "violence", ContrastiveConfig(max_pairs=100))
    assert len(pairs.with_concept) == 35
    for a, b in zip(pairs.with_concept, pairs.without, strict=True):
        assert "violence" in texts[a].concepts and "violence" not in texts[b].concepts
        if texts[a].source == "a:one":  # its own source has non-violent texts of its template
            assert texts[b].source == "a:one"
        else:  # "c/three" has none: its family "c" does, of the same length
            assert texts[b].source == "c/four"
    assert pairs.matched_by == {"source": 30, "family": 5, "origin": 0, "any": 0}
    assert len(set(pairs.without.tolist())) == 35  # unused texts are taken first


def test_pairs_need_both_sides_and_skip_small_concepts() -> None:
    texts = _corpus()
    with pytest.raises(SafesailError, match="texts with and without"):
        build_pairs(texts, "terror")
    pairs, skipped = corpus_pairs(texts, ["violence", "terror"], ContrastiveConfig())
    assert [p.concept for p in pairs] == ["violence"]
    assert "terror" in skipped


def _activations(texts: list, planted: bool, seed: int) -> sp.csr_matrix:
    """Text-level max activations of a 50-feature SAE: sparse random firing everywhere; with
    ``planted``, feature 7 fires strongly on violence texts and faintly elsewhere."""
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, (len(texts), 50)) * (rng.random((len(texts), 50)) < 0.1)
    if planted:
        violent = np.array(["violence" in t.concepts for t in texts])
        X[:, 7] = np.where(violent, 5.0 + rng.random(len(texts)), 0.2 * rng.random(len(texts)))
    return sp.csr_matrix(X)


def test_planted_concept_feature_scores_higher_than_random_sae() -> None:
    texts = _corpus()
    pairs, _ = corpus_pairs(texts, ["violence"], ContrastiveConfig())
    config = ContrastiveConfig(threshold=0.2)
    (planted,) = pre_explanation(_activations(texts, True, 0), pairs, config)
    (random,) = pre_explanation(_activations(texts, False, 0), pairs, config)
    assert planted.best_feature == 7 and planted.best_frequency == 1.0
    assert random.best_frequency < 0.5
    assert planted.i_cdf > 2 * random.i_cdf
    assert 0.0 < random.i_cdf < planted.i_cdf <= 1.0
    # L0_t counts the planted feature on every pair on top of the noise features
    assert planted.l0_t == pytest.approx(random.l0_t + 1.0, abs=1.0)


def test_i_cdf_is_the_event_weighted_mean_frequency() -> None:
    """Two pairs; feature 0 separates both, feature 1 one of them: f = (1, 0.5), so
    I_CDF = (1 + 0.25) / 1.5 and L0_t = (2 + 1) / 2."""
    texts = [
        pair_text("a", "s", ["violence"], 3),
        pair_text("b", "s", ["violence"], 3),
        pair_text("c", "s", [], 3),
        pair_text("d", "s", [], 3),
    ]
    X = sp.csr_matrix(np.array([[1.0, 1.0, 0], [1.0, 0.0, 0], [0, 0, 0.5], [0, 0, 0.5]]))
    pairs = build_pairs(texts, "violence", ContrastiveConfig(min_pairs=1))
    (score,) = pre_explanation(X, [pairs], ContrastiveConfig(threshold=0.5))
    assert score.i_cdf == pytest.approx(1.25 / 1.5)
    assert score.l0_t == pytest.approx(1.5)
    # a dead dictionary distinguishes nothing: index 0, not a division by zero
    (dead,) = pre_explanation(sp.csr_matrix((4, 3)), [pairs], ContrastiveConfig())
    assert dead.i_cdf == 0.0 and dead.l0_t == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"threshold": 1.5}, {"max_pairs": 0}, {"length_tolerance": 2}]
)
def test_contrastive_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ContrastiveConfig(**kwargs)
