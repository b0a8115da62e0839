"""The active learner: modAL shims, query strategies (known answers), and the workspace loop
(labels from the simulated oracle -> retrain -> Meta -> next batch) on the tiny workspace."""

from __future__ import annotations

import numpy as np
import pytest
from sqlmodel import Session, select

from active_learning.config import ALConfig
from active_learning.learner import ActiveLearner, primary_label
from active_learning.strategies import diverse_pick, strategy_names
from active_learning.strategies import select as pick
from safesail.db.contracts import LearnerPredictions, LearnerState, read_record
from safesail.db.tables import Explanation, Feature, LabelTask, session_scope
from safesail.errors import SafesailError
from safesail.experts.oracle import oracle_labels
from tests.conftest import copy_workspace


def test_modal_shims_make_teach_and_broken_modules_work():
    from modAL import ActiveLearner
    from sklearn.linear_model import LogisticRegression

    import active_learning.shims  # noqa: F401

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 3)), np.arange(12) % 2
    learner = ActiveLearner(LogisticRegression(), X_training=X[:4], y_training=y[:4])
    learner.teach(X[4:8], y[4:8])  # check_X_y(force_all_finite=...) without the shim
    assert len(learner.X_training) == 8
    from modAL.expected_error import expected_error_reduction  # np.float without the shim

    rows, _ = expected_error_reduction(learner, X[8:], n_instances=2)
    assert len(set(rows.tolist())) == 2
    import modAL.cluster  # noqa: F401 - sklearn.cluster.hierarchical without the shim

    assert not hasattr(np, "float")  # the numpy alias was only there during the import


@pytest.mark.parametrize("strategy", ["uncertainty", "margin", "entropy", "committee", "value"])
def test_strategies_pick_the_planted_uncertain_points(strategy):
    rng = np.random.default_rng(1)
    X_lab = np.vstack([rng.normal(-3, 0.3, (10, 2)), rng.normal(3, 0.3, (10, 2))])
    y_lab = np.array(["a"] * 10 + ["b"] * 10)
    sure = np.vstack([rng.normal(-6, 0.3, (40, 2)), rng.normal(6, 0.3, (40, 2))])
    planted = np.column_stack([np.linspace(-0.2, 0.2, 5), np.linspace(-2, 2, 5)])
    pool = np.vstack([sure[:40], planted, sure[40:]])
    picked = pick(strategy, pool, np.ones(len(pool)), 5, X_labeled=X_lab, y_labeled=y_lab)
    assert sorted(picked.rows.tolist()) == list(range(40, 45))


def test_diverse_pick_spreads_a_batch_over_clusters():
    X = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 4, axis=0)
    score = np.array([1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8])
    rows = diverse_pick(X, score, 3).rows
    assert sorted(int(r) // 4 for r in rows) == [0, 1, 2]
    # a labeled point at the first cluster pushes the batch away from it
    away = diverse_pick(X, score, 2, X_labeled=np.array([[0.0, 0.0]])).rows
    assert all(int(r) >= 4 for r in away)


def test_primary_label_prefers_safety_concepts():
    values = ["violence", "weapons", "benign", "uninterpretable"]
    assert primary_label(["benign", "weapons", "violence"], values) == "weapons"
    assert primary_label(["uninterpretable", "benign"], values) == "benign"
    assert primary_label(["nonsense"], values) is None


def test_config_is_validated():
    with pytest.raises(ValueError, match="strategy"):
        ALConfig(strategy="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ALConfig(C=0)


def test_strategy_registry_refuses_a_taken_name():
    from active_learning.strategies import Strategy, get_strategy, register_strategy

    class Again(Strategy):
        name = "random"

    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Again)
    with pytest.raises(ValueError, match="one of uncertainty, margin, .*, random, got 'bogus'"):
        ALConfig(strategy="bogus")
    assert all(get_strategy(s).version >= 1 for s in strategy_names())


@pytest.fixture(scope="module")
def al_ws(triaged_ws, tmp_path_factory, lm):
    return copy_workspace(triaged_ws, tmp_path_factory.mktemp("al") / "ws", lm)


def _with_examples(ws) -> list[int]:
    with Session(ws.engine) as session:
        return list(
            session.exec(
                select(Feature.index).where(
                    Feature.sae_id == ws.selected_sae, Feature.examples.is_not(None)
                )
            )
        )


def test_learning_loop_on_a_workspace(al_ws):
    ws, sae_id = al_ws, al_ws.selected_sae
    pool = set(_with_examples(ws))
    # cold start: no labels, every strategy still proposes distinct features with examples
    for strategy in strategy_names():
        batch = ActiveLearner(ws, ALConfig(strategy=strategy)).query(6)
        features = [q.feature for q in batch]
        assert len(features) == 6 == len(set(features)) and set(features) <= pool
        assert {q.strategy for q in batch} == {strategy} and {q.sae_id for q in batch} == {sae_id}
    cold = ActiveLearner(ws).fit()
    assert cold.n_labels == 0 and cold.macro_f1_heldout is None

    truth = oracle_labels(ws.engine, sae_id, sorted(pool))
    by_label: dict[str, list[int]] = {}
    for feature, labels in sorted(truth.items()):
        by_label.setdefault(labels[0], []).append(feature)
    assert len(by_label) >= 2, by_label
    labeled = [f for fs in by_label.values() for f in fs[:5]]
    with session_scope(ws.engine) as session:
        for f in labeled:
            session.add(
                Explanation(
                    sae_id=sae_id,
                    feature=f,
                    source="human",
                    status="accepted",
                    concepts=truth[f],
                    author="oracle",
                )
            )
    pushed = sorted(pool - set(labeled))[:3]
    with session_scope(ws.engine) as session:
        for i, f in enumerate(pushed):
            session.add(
                LabelTask(
                    project="test#1", sae_id=sae_id, feature=f, task_id=i, batch=0, strategy="x"
                )
            )

    learner = ActiveLearner(ws)
    report = learner.fit()
    again = learner.fit()  # same labels: same model, the curve gains no duplicate point
    with Session(ws.engine) as session:
        meta = read_record(session, LearnerState)
        preds = read_record(session, LearnerPredictions)
    assert report.n_labels == len(labeled) and again.model_version == report.model_version
    assert report.macro_f1_heldout is not None and 0.0 <= report.macro_f1_heldout <= 1.0
    assert meta.macro_f1_heldout == pytest.approx(report.macro_f1_heldout, abs=1e-4)
    curve = [[p.n_labels, p.macro_f1] for p in meta.curve]
    assert curve == [[0, None], [len(labeled), meta.macro_f1_heldout]]
    assert sum(meta.label_distribution.values()) == len(labeled)
    assert preds.model_version == report.model_version and preds.sae_id == sae_id
    assert {int(f) for f in preds.predictions} == pool
    values = set(ws.taxonomy.label_values())
    for p in preds.predictions.values():
        assert set(p.concepts) <= values and 0.0 < p.probability <= 1.0
    # labeled features carry out-of-fold predictions (a model that never saw their label), the
    # very ones the held-out macro-F1 is computed from, so calibration can use them unleaked
    from sklearn.metrics import f1_score

    assert preds.labeled_out_of_fold is True
    stored = [preds.predictions[f].concepts[0] for f in sorted(labeled)]
    gold = [truth[f][0] for f in sorted(labeled)]
    f1 = f1_score(gold, stored, labels=sorted(set(gold)), average="macro", zero_division=0)
    assert f1 == pytest.approx(report.macro_f1_heldout, abs=1e-9)

    exclude = set(sorted(pool - set(labeled) - set(pushed))[:2])
    for strategy in strategy_names():
        n = 4
        batch = [
            q.feature for q in ActiveLearner(ws, ALConfig(strategy=strategy)).query(n, exclude)
        ]
        assert len(batch) == len(set(batch)) == min(n, len(pool) - len(labeled) - 5)
        assert set(batch) <= pool and not set(batch) & (set(labeled) | set(pushed) | exclude)
    everything = learner.query(10_000)
    assert {q.feature for q in everything} == pool - set(labeled) - set(pushed)

    d_sae = next(r.d_sae for r in ws.saes() if r.selected)
    dead = next(iter(set(range(d_sae)) - pool), None)
    got = learner.predict(labeled[:2] + ([dead] if dead is not None else []))
    assert got[labeled[0]].model_version == report.model_version
    if dead is not None:
        assert got[dead].concepts == ["uninterpretable"]


def test_feature_matrix_is_cached_until_the_rows_change(al_ws):
    from active_learning.features import feature_matrix

    ws, sae_id = al_ws, al_ws.selected_sae
    first = feature_matrix(ws.engine, sae_id, ws.taxonomy)
    assert feature_matrix(ws.engine, sae_id, ws.taxonomy) is first
    assert not first.X.flags.writeable  # shared by every caller
    with session_scope(ws.engine) as session:
        row = session.get(Feature, (sae_id, int(first.features[0])))
        old, row.safety_score = row.safety_score, (row.safety_score or 0.0) + 0.5
    try:
        assert feature_matrix(ws.engine, sae_id, ws.taxonomy) is not first  # triage reran
    finally:
        with session_scope(ws.engine) as session:
            session.get(Feature, (sae_id, int(first.features[0]))).safety_score = old


def test_plugin_offers_the_learner(al_ws):
    from active_learning.learner import LEARNER_VERSION
    from active_learning.plugin import PLUGIN

    learner = PLUGIN.learner(al_ws, "random")
    assert learner.strategy.name == "random" and learner.model_version.startswith(
        f"{LEARNER_VERSION}-n"
    )
    assert PLUGIN.learner(al_ws, None).strategy.name == ALConfig.strategy


def test_learn_command(al_ws, capsys):
    from safesail.cli.main import main

    assert main(["learn", "--workspace", str(al_ws.config.workspace), "--query", "2"]) == 0
    out = capsys.readouterr().out
    assert "held-out macro-F1" in out and "next 2 features to label" in out
    with pytest.raises(SystemExit):
        main(["learn", "--workspace", str(al_ws.config.workspace), "--strategy", "bogus"])


def test_query_needs_a_selected_sae(tmp_path, lm):
    from tests.conftest import make_workspace

    with pytest.raises(SafesailError, match="no SAE selected"):
        ActiveLearner(make_workspace(tmp_path / "empty", lm)).query(3)


def test_heldout_macro_f1_known_answers():
    from active_learning.calibration import heldout_macro_f1

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-4, 0.2, (8, 2)), rng.normal(4, 0.2, (8, 2))])
    y = np.array(["a"] * 8 + ["b"] * 8)
    assert heldout_macro_f1(X, y, ALConfig()) == pytest.approx(1.0)
    # a class seen once (far from the rest): the fold holding it out trains on "a" alone and
    # predicts "a"; the other fold's model sees the b, but its held-out points are all a's at -4.
    # So every prediction is "a": F1(a) = 2*(4/5)*1/(4/5+1) = 8/9, F1(b) = 0, macro = 4/9.
    X1 = np.vstack([X[:4], [[4.0, 4.0]]])
    f1 = heldout_macro_f1(X1, np.array(["a", "a", "a", "a", "b"]), ALConfig())
    precision_a, recall_a = 4 / 5, 1.0
    expected = (2 * precision_a * recall_a / (precision_a + recall_a) + 0.0) / 2
    assert f1 == pytest.approx(expected)
    assert heldout_macro_f1(X[:3], y[:3], ALConfig()) is None  # too few labels


def test_benchmark_refuses_a_workspace_without_triaged_features(tmp_path, lm):
    import importlib.util
    from pathlib import Path

    from tests.conftest import make_workspace

    path = Path(__file__).parents[2] / "bench" / "label_efficiency.py"
    spec = importlib.util.spec_from_file_location("label_efficiency", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    make_workspace(tmp_path / "ws", lm)
    with pytest.raises(SafesailError, match="has no collected features — run `make demo` first"):
        bench.load(tmp_path / "ws")
    with pytest.raises(SafesailError, match="no workspace at .* — run `make demo` first"):
        bench.load(tmp_path / "missing")


def _matrix(X, decoder, y_texts=None):
    """A FeatureMatrix of planted rows (no workspace): static columns X, unit decoder rows and
    one corpus text per row (activation patterns that share nothing)."""
    from scipy import sparse

    from active_learning.features import FeatureMatrix

    n = len(X)
    decoder = decoder / np.linalg.norm(decoder, axis=1, keepdims=True)
    pattern = sparse.csr_matrix(sparse.identity(n, dtype=np.float32))
    return FeatureMatrix(
        "planted",
        np.arange(n, dtype=np.int64),
        X.astype(np.float32),
        [f"c{i}" for i in range(X.shape[1])],
        np.ones(n),
        [("benign", 0.5)] * n,
        decoder.astype(np.float32),
        pattern,
        [("benign", 3)] * n,
    )


def test_neighbour_columns_never_see_the_row_itself():
    from active_learning.features import neighbour_columns

    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    matrix = _matrix(np.zeros((4, 1)), np.array([e1, e1, e2, e1 + 0.1 * e2]))
    near, names = neighbour_columns(
        matrix, np.array([0, 1, 2]), np.array(["a", "a", "b"]), ["a", "b"]
    )
    col = {name: i for i, name in enumerate(names)}
    a, b = col["near_decoder:a"], col["near_decoder:b"]
    assert near[0, a] == pytest.approx(1.0) and near[1, a] == pytest.approx(1.0)  # each other
    assert near[2, b] == 0.0  # the only "b" is itself: left out, not a perfect match
    assert near[0, b] == pytest.approx(0.0) and near[3, a] > 0.99 and 0 < near[3, b] < 0.2
    assert np.all(near[:, col["near_pattern:a"]] == 0.0)  # no shared texts


def _planted(n, seed, signal):
    """Static noise columns; with `signal`, rows come in pairs sharing a decoder direction and
    a label (the neighbour columns must find the partner), else random labels and directions."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    if signal:
        base = rng.normal(size=(n // 2, 32))
        decoder = np.repeat(base, 2, axis=0) + 0.05 * rng.normal(size=(n, 32))
        y = np.repeat(rng.choice(["a", "b", "c"], n // 2), 2)
    else:
        decoder, y = rng.normal(size=(n, 32)), rng.choice(["a", "b", "c"], n)
    return _matrix(X, decoder), y


def test_out_of_fold_predictions_do_not_leak_the_own_label():
    from active_learning.calibration import macro_f1
    from active_learning.learner import ConceptModel

    config = ALConfig()
    # signal-free: a held-out row that saw its own label in the neighbour columns would be
    # predicted perfectly; out of fold it is chance
    matrix, y = _planted(90, 0, signal=False)
    oof = ConceptModel(matrix, ["a", "b", "c"], config).out_of_fold(np.arange(90), y)
    assert macro_f1(y, oof.labels) < 0.55
    # planted: the partner's label (in another fold or the same training fold) carries it
    matrix, y = _planted(90, 1, signal=True)
    oof = ConceptModel(matrix, ["a", "b", "c"], config).out_of_fold(np.arange(90), y)
    assert macro_f1(y, oof.labels) > 0.6


def test_calibration_is_valid_monotonic_and_honest():
    from active_learning.calibration import calibrate, fit_temperature, out_of_fold

    rng = np.random.default_rng(3)
    raw = rng.dirichlet(np.ones(3), size=50)
    for t in (0.3, 1.0, 4.0):
        cal = calibrate(raw, t)
        assert np.allclose(cal.sum(axis=1), 1.0) and np.all((cal > 0) & (cal < 1))
        assert np.array_equal(cal.argmax(axis=1), raw.argmax(axis=1))
    two = np.column_stack([np.linspace(0.01, 0.99, 30), 1 - np.linspace(0.01, 0.99, 30)])
    assert np.all(np.diff(calibrate(two, 2.5)[:, 0]) > 0)  # order of confidence kept
    # over-confident answers that are right half the time: the temperature softens them
    sure = np.tile([[0.95, 0.05]], (200, 1))
    assert fit_temperature(sure, np.arange(200) % 2) > 3.0
    # signal-free labels: calibrated confidence matches the (chance) accuracy
    X, y = rng.normal(size=(150, 8)), rng.choice(["a", "b"], 150)
    oof = out_of_fold(X, y, ALConfig())
    assert abs(oof.probability.mean() - np.mean(oof.labels == y)) < 0.08
    # a planted signal: confident predictions are right more often than unsure ones
    X = rng.normal(size=(200, 4))
    y = np.where(X[:, 0] + 0.7 * rng.normal(size=200) > 0, "a", "b")
    oof = out_of_fold(X, y, ALConfig())
    sure_half = oof.probability >= np.median(oof.probability)
    right = oof.labels == y
    assert right[sure_half].mean() > right[~sure_half].mean()
    assert abs(oof.probability.mean() - right.mean()) < 0.08


def test_feature_matrix_reads_what_annotators_read(al_ws):
    from safetensors.numpy import load_file

    from active_learning import columns
    from active_learning import features as feats

    ws, sae_id = al_ws, al_ws.selected_sae
    feats._CACHE.clear()  # built here, not taken from an earlier test's process cache
    cache = ws.config.workspace / "c"
    cache.mkdir()
    stale, other = (cache / f"concept-features-{s}-{'0' * 16}.npz" for s in (sae_id, f"{sae_id}-x"))
    stale.write_bytes(b"old rows")
    other.write_bytes(b"another SAE's")
    m = feats.feature_matrix(ws.engine, sae_id, ws.taxonomy, cache_dir=cache)
    assert not stale.exists() and other.exists()  # only this SAE's older matrix goes
    col = {c: i for i, c in enumerate(m.columns)}
    labels = [*ws.taxonomy.safety_concepts(), "benign"]
    for group in (
        [f"proto:{c}" for c in labels],
        [f"vote:{c}" for c in labels],
        [f"kind:{k}" for k in columns.KINDS],
        ["span_pc0", "phrase_pc0", "coherence", "same_token_share", "window_density"],
        ["log_n_fire", "log_rate", "tag:safety_score", "tag:frac:violence"],
    ):
        assert set(group) <= set(col), group
    free = [m.columns[i] for i in feats.tag_free(m.columns)]
    assert free and not any(c.startswith("tag:") for c in free)
    assert len(free) < len(m.columns)
    kinds = m.X[:, [col[f"kind:{k}"] for k in columns.KINDS]]
    assert np.allclose(kinds.sum(axis=1), 1.0, atol=1e-5)  # every peak has one token class
    votes = m.X[:, [col[f"vote:{c}"] for c in labels]].sum(axis=1)
    assert np.all(np.isclose(votes, 1.0, atol=1e-5) | np.isclose(votes, 0.0))
    # the reader's own answer, from the same windows: its columns say what it read, how sure
    from safesail.experts.reader import read_features

    read = read_features(ws.engine, sae_id, [int(f) for f in m.features], ws.taxonomy)
    assert m.reader == [(read[int(f)].labels[0], read[int(f)].confidence) for f in m.features]
    said = m.X[:, [col[f"reader:{c}"] for c in [*labels, "uninterpretable"]]]
    assert np.allclose(said.max(axis=1), [c / 5 for _, c in m.reader])
    # the decoder rows are the SAE's own W_dec rows, unit length
    record = next(r for r in ws.saes() if r.id == sae_id)
    w_dec = load_file(f"{record.path}/sae_weights.safetensors")["W_dec"][m.features]
    assert np.allclose(m.decoder, w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True), atol=1e-5)
    norms = np.sqrt(np.asarray(m.pattern.multiply(m.pattern).sum(axis=1)).ravel())
    assert np.allclose(norms, 1.0, atol=1e-5)
    # cached on disk: a new process (an emptied in-process cache) reads the same matrix back
    assert list((ws.config.workspace / "c").glob(f"concept-features-{sae_id}-*.npz"))
    feats._CACHE.clear()
    again = feats.feature_matrix(
        ws.engine, sae_id, ws.taxonomy, cache_dir=ws.config.workspace / "c"
    )
    assert again is not m and again.columns == m.columns
    assert np.array_equal(again.X, m.X) and np.array_equal(again.decoder, m.decoder)
    assert (again.pattern != m.pattern).nnz == 0 and again.prior == m.prior
    assert again.reader == m.reader


def test_feature_matrix_built_in_blocks_is_the_one_built_at_once(al_ws, monkeypatch):
    """A large SAE's matrix is built a block of features at a time (its examples, windows and
    embeddings dropped after each); every column is per feature but the principal components,
    fitted over all rows, so blocks change nothing but float rounding of the embeddings."""
    from active_learning import features as feats

    ws, sae_id = al_ws, al_ws.selected_sae
    feats._CACHE.clear()
    whole = feats.feature_matrix(ws.engine, sae_id, ws.taxonomy)
    assert len(whole.features) > 7
    feats._CACHE.clear()
    monkeypatch.setattr(feats, "BUILD_BLOCK", 7)
    blocks = feats.feature_matrix(ws.engine, sae_id, ws.taxonomy)
    feats._CACHE.clear()
    assert blocks is not whole and blocks.columns == whole.columns
    assert np.array_equal(blocks.features, whole.features)
    assert np.allclose(blocks.X, whole.X, atol=1e-4)
    assert np.array_equal(blocks.value, whole.value) and blocks.prior == whole.prior
    assert (blocks.pattern != whole.pattern).nnz == 0 and blocks.reader == whole.reader


def test_queue_order_and_guess_reach_the_task_data(al_ws):
    from annotation.push import queue_fields
    from annotation.tasks import build_tasks, prediction

    ws = al_ws
    learner = ActiveLearner(ws)
    queries = learner.query(5)
    features = [q.feature for q in queries]
    guesses = learner.predict(features)
    predictions = {
        f: [prediction(g.concepts, "", learner.model_version, g.probability)]
        for f, g in guesses.items()
    }
    with Session(ws.engine) as session:
        tasks = build_tasks(
            session, ws.selected_sae, features, {}, predictions, queue_fields(queries, 20)
        )
    assert [t["data"]["feature"] for t in tasks] == features  # imported in the learner's order
    positions = [t["data"]["queue_position"] for t in tasks]
    assert positions == list(range(21, 26))  # behind the 20 tasks already queued
    assert [t["data"]["query_score"] for t in tasks] == [round(q.score, 6) for q in queries]
    for task in tasks:
        (pred,) = task["predictions"]
        assert pred["model_version"] == learner.model_version and 0 < pred["score"] <= 1
