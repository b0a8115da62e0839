"""Tests for SAE selection and feature triage on synthetic max-activation matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safesail.errors import SafesailError
from safesail.selection.config import SelectionConfig
from safesail.selection.metrics import auroc_per_feature
from safesail.selection.score import choose_sae, rank_saes, score_sae
from safesail.triage.config import TriageConfig
from safesail.triage.text import feature_selectivity, triage

CONCEPTS = ["violence", "self_harm", "fraud"]


def _labels(n_per_concept: int = 30, n_benign: int = 60) -> list[list[str]]:
    return [[c] for c in CONCEPTS for _ in range(n_per_concept)] + [["benign"]] * n_benign


def _noise(rng: np.random.Generator, n: int, d: int, density: float) -> np.ndarray:
    """Sparse, non-negative activations with no relation to any label."""
    return np.where(rng.random((n, d)) < density, rng.exponential(1.0, (n, d)), 0.0)


def _planted(
    rng: np.random.Generator, labels: list[list[str]], d: int = 300
) -> tuple[np.ndarray, dict[str, int]]:
    """Noise plus one feature per concept firing on ~90% of its texts, ~5% of the rest."""
    X = _noise(rng, len(labels), d, density=0.05)
    features = rng.choice(d, size=len(CONCEPTS), replace=False)
    planted = {c: int(f) for c, f in zip(CONCEPTS, features, strict=True)}
    for concept, f in planted.items():
        on = np.array([concept in lab for lab in labels])
        X[:, f] = np.where(
            on,
            np.where(rng.random(len(labels)) < 0.9, rng.uniform(2.0, 5.0, len(labels)), 0.0),
            np.where(rng.random(len(labels)) < 0.05, rng.uniform(0.1, 1.0, len(labels)), 0.0),
        )
    return X, planted


# --- auroc_per_feature ---------------------------------------------------------------------


def _brute_auroc(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([roc_auc_score(y, X[:, j]) for j in range(X.shape[1])])


def test_auroc_matches_sklearn_on_sparse_data_with_ties() -> None:
    rng = np.random.default_rng(1)
    n, d = 90, 40
    # Small integer activations: many ties among nonzeros as well as in the zero block.
    dense = np.where(rng.random((n, d)) < 0.3, rng.integers(1, 4, (n, d)), 0).astype(np.float32)
    dense[:, 0] = 0.0  # never fires
    dense[:, 1] = 2.0  # fires everywhere at the same value
    dense[:, 2] = rng.integers(1, 3, n)  # fires everywhere, two tied levels
    y = rng.random(n) < 0.35
    X = sp.csr_array(dense)
    X.data[np.flatnonzero(X.indices >= 3)[:5]] = 0.0  # stored zeros must count as zeros
    expected = _brute_auroc(X.toarray(), y)

    got = auroc_per_feature(X, y)

    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[0] == 0.5 and got[1] == 0.5
    assert np.count_nonzero(X.data == 0) == 5, "the caller's matrix must not be modified"


def test_auroc_dense_input_and_negative_values() -> None:
    rng = np.random.default_rng(2)
    dense = np.where(rng.random((70, 25)) < 0.4, rng.normal(0.0, 1.0, (70, 25)).round(1), 0.0)
    y = rng.random(70) < 0.5
    np.testing.assert_allclose(auroc_per_feature(dense, y), _brute_auroc(dense, y), atol=1e-12)
    np.testing.assert_allclose(
        auroc_per_feature(sp.csc_matrix(dense), y), _brute_auroc(dense, y), atol=1e-12
    )


def test_auroc_beyond_uint16_feature_ids() -> None:
    """Dictionaries wider than 65536 features take a different column-sort path."""
    rng = np.random.default_rng(8)
    d = (1 << 16) + 500
    X = sp.random(40, d, density=0.02, random_state=rng, format="csr")
    X.data = np.ceil(X.data * 3)  # ties
    y = rng.random(40) < 0.5
    cols = np.r_[rng.choice(d, 30, replace=False), d - 1]
    dense = X[:, cols].toarray()

    got = auroc_per_feature(X, y)[cols]

    np.testing.assert_allclose(got, _brute_auroc(dense, y), atol=1e-12)


@pytest.mark.parametrize(
    "positive",
    [np.ones(10, dtype=bool), np.zeros(10, dtype=bool), np.arange(10) % 2, np.ones(9, dtype=bool)],
)
def test_auroc_rejects_bad_labels(positive: np.ndarray) -> None:
    with pytest.raises(ValueError):
        auroc_per_feature(np.ones((10, 3)), positive)


# --- score_sae / rank_saes -----------------------------------------------------------------


def test_specific_feature_beats_always_on_feature_with_equal_auroc() -> None:
    """AUROC cannot tell a concept feature from one that fires everywhere, only more strongly on
    the concept; selection must prefer the SAE whose feature stays quiet on benign text."""
    rng = np.random.default_rng(5)
    labels = [["violence"]] * 30 + [["benign"]] * 30
    is_concept = np.array([c == ["violence"] for c in labels])
    specific = np.where(is_concept, rng.uniform(2, 3, 60), 0.0)
    always_on = np.where(is_concept, rng.uniform(2, 3, 60), rng.uniform(1, 1.9, 60))
    noise = _noise(rng, 60, 20, density=0.05)
    scores = {
        "always_on": score_sae(
            sp.csr_array(np.column_stack([always_on, noise])), labels, ["violence"]
        ),
        "specific": score_sae(
            sp.csr_array(np.column_stack([specific, noise])), labels, ["violence"]
        ),
    }
    assert (
        scores["always_on"].concepts[0].best_auroc
        == scores["specific"].concepts[0].best_auroc
        == 1.0
    )
    assert scores["specific"].concepts[0].best_specificity == pytest.approx(1.0)
    assert scores["always_on"].concepts[0].best_specificity < 0.05  # only noise features left
    assert [name for name, _ in rank_saes(scores)] == ["specific", "always_on"]


def test_planted_sae_ranks_first_and_finds_planted_features() -> None:
    rng = np.random.default_rng(3)
    labels = _labels()
    X_a, planted = _planted(rng, labels)
    X_b = _noise(rng, len(labels), 300, density=0.05)

    scores = {
        "b_random": score_sae(sp.csr_array(X_b), labels, CONCEPTS),
        "a_planted": score_sae(sp.csr_array(X_a.astype(np.float32)), labels, CONCEPTS),
    }
    ranking = rank_saes(scores)

    assert [name for name, _ in ranking] == ["a_planted", "b_random"]
    a = scores["a_planted"]
    assert a.skipped == {}
    assert {c.concept: c.best_feature for c in a.concepts} == planted
    assert {c.concept: c.specific_feature for c in a.concepts} == planted
    n_benign = sum(lab == ["benign"] for lab in labels)
    for c in a.concepts:
        assert (c.n_pos, c.n_neg) == (30, len(labels) - 30)  # contrast "rest": all other texts
    benign_only = score_sae(
        sp.csr_array(X_a.astype(np.float32)), labels, CONCEPTS, SelectionConfig(contrast="benign")
    )
    assert {(c.n_pos, c.n_neg) for c in benign_only.concepts} == {(30, n_benign)}
    for c in a.concepts:
        assert c.best_auroc > 0.9
        assert c.n_separating == 1  # noise features cannot reach AUROC 0.75
        assert c.probe_f1 > 0.75  # chance (all positive) is 2p/(1+p) = 0.33 here
    assert all(c.n_separating == 0 for c in scores["b_random"].concepts)
    for s in scores.values():
        assert 0.0 <= s.score <= 1.0
    assert a.score > scores["b_random"].score + 0.3

    def chance_corrected(c):  # an all-positive guess has F1 = 2p / (1 + p)
        chance = 2 * c.n_pos / (2 * c.n_pos + c.n_neg)
        return max(0.0, (c.probe_f1 - chance) / (1 - chance))

    expected = np.mean(
        [
            0.45 * c.best_specificity + 0.45 * chance_corrected(c) + 0.1 / c.n_separating
            for c in a.concepts
        ]
    )
    assert a.score == pytest.approx(expected)


def test_rank_saes_breaks_ties_by_name() -> None:
    s = score_sae(_planted(np.random.default_rng(4), _labels())[0], _labels(), CONCEPTS)
    assert [name for name, _ in rank_saes({"z": s, "a": s, "m": s})] == ["a", "m", "z"]


def test_choose_sae_by_pre_explanation_index_among_the_eligible() -> None:
    """The protocol's choice: the pre-explanation index decides, not today's score; only the
    search candidates are eligible; an unmeasured index falls back on the score."""
    labels = _labels()
    strong = score_sae(_planted(np.random.default_rng(4), labels)[0], labels, CONCEPTS)
    weak = score_sae(_noise(np.random.default_rng(5), len(labels), 300, 0.05), labels, CONCEPTS)
    assert strong.score > weak.score
    pre = {"strong": {"index": 0.2}, "weak": {"index": 0.6}, "deep": {"index": 0.9}}
    scores = {"strong": strong, "weak": weak, "deep": strong}
    assert choose_sae(scores, pre, "pre_explanation", ["strong", "weak"]) == "weak"
    assert choose_sae(scores, pre, "score", ["strong", "weak"]) == "strong"
    assert choose_sae(scores, pre, "pre_explanation", ["strong", "weak", "deep"]) == "deep"
    unmeasured = {"strong": {"index": None}, "weak": {"index": None}}
    assert choose_sae(scores, unmeasured, "pre_explanation", ["weak", "strong"]) == "strong"


def test_probe_does_not_leak_test_fold_into_feature_choice() -> None:
    """Pure noise: an honest probe is near chance, one that picks features on all rows is not.

    With 40 texts per contrast and 4000 noise features, some features separate the full
    sample by chance; if the test fold helped choose them, F1 would be high. The same
    data is run through such a leaking probe to show that the bound can be exceeded.
    """
    rng = np.random.default_rng(5)
    names = [f"c{i}" for i in range(6)]
    labels = [[c] for c in names for _ in range(20)] + [["benign"]] * 20
    X = sp.csr_array(_noise(rng, len(labels), 4000, density=0.1))
    config = SelectionConfig()
    bound = 0.6

    honest = np.mean([c.probe_f1 for c in score_sae(X, labels, names, config).concepts])

    leaked = []
    for name in names:
        rows = np.flatnonzero([name in lab or lab == ["benign"] for lab in labels])
        y = np.array([name in labels[r] for r in rows])
        top = np.argsort(-auroc_per_feature(X[rows], y))[: config.probe_features]
        X_top = X[rows][:, top].toarray()
        folds = StratifiedKFold(config.probe_folds, shuffle=True, random_state=config.seed)
        for train, test in folds.split(X_top, y):
            probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
            probe.fit(X_top[train], y[train])
            leaked.append(f1_score(y[test], probe.predict(X_top[test])))

    assert np.mean(leaked) > bound, "the test data must be able to expose a leak"
    assert honest < bound, f"probe F1 {honest:.2f} on pure noise: feature choice leaks"


def test_concepts_with_too_few_texts_are_skipped_and_all_skipped_raises() -> None:
    rng = np.random.default_rng(6)
    labels = _labels() + [["extremism"]] * 4
    X = np.vstack([_planted(rng, _labels())[0], _noise(rng, 4, 300, 0.05)])

    s = score_sae(X, labels, [*CONCEPTS, "extremism", "absent"])

    assert [c.concept for c in s.concepts] == CONCEPTS
    assert set(s.skipped) == {"extremism", "absent"}
    assert "4 concept texts" in s.skipped["extremism"]
    with pytest.raises(SafesailError, match="at least 10"):
        score_sae(X, labels, ["extremism", "absent"])


def test_score_sae_rejects_inconsistent_labels() -> None:
    X = np.ones((3, 2))
    with pytest.raises(SafesailError, match="benign"):
        score_sae(X, [["benign", "fraud"], ["fraud"], ["benign"]], ["fraud"])
    with pytest.raises(ValueError):
        score_sae(X, [["fraud"], ["benign"]], ["fraud"])
    with pytest.raises(ValueError):
        score_sae(X, ["fraud", "benign", "benign"], ["fraud"])
    with pytest.raises(ValueError):
        score_sae(X, [["fraud"], ["benign"], ["benign"]], ["benign"])


# --- feature_selectivity / triage ----------------------------------------------------------


def test_triage_picks_planted_features_and_drops_always_on_feature() -> None:
    rng = np.random.default_rng(7)
    labels = _labels()
    X, planted = _planted(rng, labels)
    n, d = X.shape
    is_fraud = np.array(["fraud" in lab for lab in labels])
    is_violence = np.array(["violence" in lab for lab in labels])
    # Fires on every text, more strongly on fraud: separating by AUROC, but not selective.
    always_on = np.where(is_fraud, rng.uniform(2.0, 3.0, n), rng.uniform(0.5, 1.0, n))
    # Fires on most violence texts and some fraud texts: must be reported once, as violence.
    shared = np.where(is_violence & (rng.random(n) < 0.9), 3.0, 0.0)
    shared += np.where(is_fraud & (rng.random(n) < 0.4), 3.0, 0.0)
    X = sp.csr_array(np.column_stack([X, always_on, shared]))

    sel = feature_selectivity(X, labels, [*CONCEPTS, "absent"])

    assert sel.concepts == CONCEPTS
    assert sel.auroc.shape == sel.frac_pos.shape == (3, d + 2)
    assert (sel.frac_neg[:, d] == 1.0).all() and sel.frac_pos[2, d] == 1.0
    np.testing.assert_allclose(sel.frac_pos[0, d + 1], np.mean(shared[is_violence] > 0))

    candidates = triage(sel)

    found = {c.feature: c.concept for c in candidates}
    assert found == {**{f: c for c, f in planted.items()}, d + 1: "violence"}
    assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
    n_pos, n_neg = 30, len(labels) - 30
    for c in candidates:  # precision and F1 recomputed from the firing fractions
        fired_pos, fired_neg = c.frac_pos * n_pos, c.frac_neg * n_neg
        assert c.precision == pytest.approx(fired_pos / (fired_pos + fired_neg))
        assert c.precision_low < c.precision and c.precision_low >= TriageConfig().min_precision
        assert c.p_value <= 0.05 / sel.auroc.size  # Bonferroni over features x concepts
        assert c.support == round(fired_pos)
        assert c.score == pytest.approx(2 * c.precision * c.frac_pos / (c.precision + c.frac_pos))
        assert 0.0 <= c.score <= 1.0
    # Enrichment alone keeps the always-on feature out (it fires on everything, so its share
    # of concept texts is just the base rate), even with the precision gate open.
    assert d not in {c.feature for c in triage(sel, TriageConfig(min_precision=0.0))}


def test_sparse_clean_feature_is_a_candidate_despite_low_auroc() -> None:
    """A feature firing on 6 of 30 violence texts and nothing else: AUROC ~0.6, precision 1."""
    labels = _labels()
    rare = np.array([3.0 if i < 6 else 0.0 for i in range(len(labels))])  # first 6 are violence
    sel = feature_selectivity(sp.csr_array(rare[:, None]), labels, CONCEPTS)
    assert sel.auroc[0, 0] == pytest.approx(0.6)
    (found,) = triage(sel)
    assert (found.concept, found.precision, found.support) == ("violence", 1.0, 6)
    assert found.precision_low == pytest.approx(6 / (6 + 1.96**2))  # Wilson bound at p = 1
    assert triage(sel, TriageConfig(min_support=7)) == []


def test_style_feature_is_specific_only_against_benign() -> None:
    """A feature firing on every safety prompt (their shared style) but never on benign text
    separates each concept from benign; contrasted with the rest it is specific to none."""
    rng = np.random.default_rng(9)
    labels = _labels()
    X, planted = _planted(rng, labels)
    style = np.array([0.0 if lab == ["benign"] else 2.0 for lab in labels])
    X = sp.csr_array(np.column_stack([X, style]))
    d = X.shape[1] - 1
    against_benign = triage(feature_selectivity(X, labels, CONCEPTS, 0.2, "benign"))
    against_rest = triage(feature_selectivity(X, labels, CONCEPTS, 0.2, "rest"))
    assert d in {c.feature for c in against_benign}
    assert d not in {c.feature for c in against_rest}
    assert {c.feature for c in against_rest} == set(planted.values())


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold_auroc": 0.5},
        {"threshold_auroc": 1.2},
        {"threshold_auroc": "0.8"},
        {"probe_features": 0},
        {"probe_features": 2.5},
        {"probe_folds": 1},
        {"min_texts": 1},
        {"min_texts": 3, "probe_folds": 5},
        {"seed": -1},
        {"seed": True},
        {"rank_by": "auroc"},
    ],
)
def test_selection_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SelectionConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_precision": -0.1},
        {"min_precision": 1.5},
        {"min_precision": None},
        {"min_support": 0},
        {"min_support": 2.5},
        {"fire_fraction": 1.2},
        {"contrast": "others"},
        {"alpha": 1.5},
    ],
)
def test_triage_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TriageConfig(**kwargs)
