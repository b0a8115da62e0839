"""The active learner over SAE features: which features are worth an expert's label next, and
what the current model predicts for the rest.

Labels are primary-concept multi-class: a feature's label is the first safety concept of its
human Explanation, else "benign" (not safety-related), else "uninterpretable". Macro-F1 is
taken over the label values present. Import-light: numpy, scikit-learn and modAL are imported
inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from sqlmodel import Session, select

from safesail.errors import SafesailError
from safesail.storage import Explanation, LabelTask, get_meta, human_labels, session_scope, set_meta
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

if TYPE_CHECKING:
    import numpy as np

    from active_learning.features import FeatureMatrix

Strategy = Literal["uncertainty", "margin", "entropy", "committee", "diverse", "value", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

LEARNER_VERSION = "al1"
"""Bumped when the representation or the model changes, so model_version names change too."""


@dataclass(frozen=True)
class ALConfig:
    """How the learner fits and which strategy picks the next batch."""

    strategy: Strategy = "diverse"
    """uncertainty | margin | entropy | committee (max KL disagreement) | diverse (modAL ranked
    batch over the most uncertain; best in bench/label_efficiency.py) | value (margin
    uncertainty x safety value, diverse batch) | random."""
    seed: int = 0
    """Seeds the model, committee bootstraps, cross-validation folds and random sampling."""
    C: float = 0.3
    """Inverse L2 regularisation of the logistic regression."""
    min_labels: int = 4
    """Fewer human labels than this (or a single class): cold start, a value-weighted diverse
    batch instead of model uncertainty."""
    committee_size: int = 5
    """Learners in the committee strategy."""
    candidate_factor: int = 10
    """Diverse batches re-rank the top candidate_factor x n features by score."""
    cv_folds: int = 5
    """At most this many folds for the held-out macro-F1 estimate."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got '{self.strategy}'"
            )
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.min_labels < 2 or self.committee_size < 2 or self.cv_folds < 2:
            raise ValueError("min_labels, committee_size and cv_folds must be >= 2")
        if self.candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {self.candidate_factor}")


class Query(NamedTuple):
    """One feature worth labeling next."""

    sae_id: str
    feature: int
    score: float
    strategy: str


class Prediction(NamedTuple):
    """The learner's label for a feature and its probability."""

    concepts: list[str]
    probability: float
    model_version: str


class LearnerReport(NamedTuple):
    """What one retrain learned."""

    n_labels: int
    macro_f1_heldout: float | None
    model_version: str
    strategy: str
    label_distribution: dict[str, int]
    n_predictions: int


def primary_label(concepts: list[str], values: list[str]) -> str | None:
    """The one class a multi-concept answer trains: its first safety concept, else benign,
    else uninterpretable; None when it holds no known label value."""
    known = [c for c in concepts if c in values]
    safety = [c for c in known if c not in (BENIGN, UNINTERPRETABLE)]
    if safety:
        return safety[0]
    for value in (BENIGN, UNINTERPRETABLE):
        if value in known:
            return value
    return None


class _State(NamedTuple):
    sae_id: str
    matrix: FeatureMatrix
    Xs: np.ndarray  # standardised rows of matrix.X
    labels: dict[int, str]  # feature -> primary label (human gold)
    model_version: str


def _sae_id(ws) -> str:
    sae_id = ws.selected_sae
    if sae_id is None:
        raise SafesailError("no SAE selected yet: run `safesail select` and `safesail triage`")
    return sae_id


def _gold(session: Session, sae_id: str, values: list[str]) -> dict[int, str]:
    """Primary labels of each feature's human label (storage.human_labels: the latest accepted)."""
    out = {}
    for feature, row in sorted(human_labels(session, sae_id).items()):
        if (label := primary_label(list(row.concepts or []), values)) is not None:
            out[feature] = label
    return out


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """The fits are small and dense: extra BLAS threads only spin against the other processes
    on a shared machine (measured 10-100x slower under load)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _state(ws, config: ALConfig) -> _State:
    import numpy as np

    from active_learning.features import feature_matrix

    sae_id = _sae_id(ws)
    matrix = feature_matrix(ws.engine, sae_id, ws.taxonomy, config.seed)
    if not len(matrix.features):
        raise SafesailError(
            f"SAE {sae_id} has no features with examples: run `safesail collect` and `safesail triage`"
        )
    with Session(ws.engine) as session:
        labels = _gold(session, sae_id, ws.taxonomy.label_values())
    std = matrix.X.std(axis=0)
    Xs = (matrix.X - matrix.X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    key = json.dumps(
        [sorted(labels.items()), config.C, config.seed, LEARNER_VERSION], separators=(",", ":")
    )
    version = f"{LEARNER_VERSION}-n{len(labels)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return _State(sae_id, matrix, Xs.astype(np.float32), labels, version)


def _labeled_rows(state: _State) -> list[int]:
    """Matrix rows of the labeled features that have examples, in feature order."""
    row_of = {int(f): i for i, f in enumerate(state.matrix.features)}
    return [row_of[f] for f in sorted(state.labels) if f in row_of]


def _labeled_features(state: _State) -> list[int]:
    return [int(state.matrix.features[r]) for r in _labeled_rows(state)]


def _training(state: _State) -> tuple[np.ndarray, np.ndarray]:
    """The standardised rows and labels of the labeled features that have examples."""
    import numpy as np

    rows = _labeled_rows(state)
    y = np.array([state.labels[int(state.matrix.features[r])] for r in rows], dtype=object)
    return state.Xs[rows], y.astype(str)


def query_features(
    ws, n: int, config: ALConfig | None = None, exclude: set[int] | None = None
) -> list[Query]:
    """The next n features of the selected SAE to label: none already labeled by a human,
    pushed to Label Studio, accepted automatically, or in `exclude`; best first."""
    if n < 0:
        raise SafesailError(f"the batch size must be >= 0, got {n}")
    config = config or ALConfig()
    with _one_blas_thread():
        return _query(ws, n, config, exclude or set())


def _query(ws, n: int, config: ALConfig, exclude: set[int]) -> list[Query]:
    import numpy as np

    from active_learning.strategies import select as pick

    state = _state(ws, config)
    with Session(ws.engine) as session:
        taken = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == state.sae_id, Explanation.source == "human"
                )
            )
        )
        taken |= set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == state.sae_id,
                    Explanation.source == "auto",
                    Explanation.status == "accepted",
                )
            )
        )
        taken |= set(
            session.exec(select(LabelTask.feature).where(LabelTask.sae_id == state.sae_id))
        )
    taken |= exclude
    pool = np.flatnonzero(~np.isin(state.matrix.features, np.array(sorted(taken), dtype=np.int64)))
    X_lab, y_lab = _training(state)
    picked = pick(
        config.strategy,
        state.Xs[pool],
        state.matrix.value[pool],
        n,
        X_labeled=X_lab,
        y_labeled=y_lab,
        C=config.C,
        seed=config.seed,
        min_labels=config.min_labels,
        committee_size=config.committee_size,
        candidate_factor=config.candidate_factor,
    )
    return [
        Query(state.sae_id, int(state.matrix.features[pool[r]]), float(s), config.strategy)
        for r, s in zip(picked.rows, picked.scores, strict=True)
    ]


def _predict_state(state: _State, config: ALConfig) -> dict[int, Prediction]:
    """Predictions for every feature with examples: the fitted model, or triage's prior at a
    cold start."""
    from active_learning.strategies import can_fit, make_estimator

    X_lab, y_lab = _training(state)
    features = [int(f) for f in state.matrix.features]
    if not can_fit(y_lab, config.min_labels):
        return {
            f: Prediction([label], p, f"{state.model_version}-prior")
            for f, (label, p) in zip(features, state.matrix.prior, strict=True)
        }
    model = make_estimator(config.C, config.seed).fit(X_lab, y_lab)
    proba = model.predict_proba(state.Xs)
    best = proba.argmax(axis=1)
    return {
        f: Prediction([str(model.classes_[b])], float(proba[i, b]), state.model_version)
        for i, (f, b) in enumerate(zip(features, best, strict=True))
    }


def predict(ws, features: list[int], config: ALConfig | None = None) -> dict[int, Prediction]:
    """The current model's label per feature; a feature without examples is uninterpretable
    by rule (nothing to show an expert)."""
    config = config or ALConfig()
    with _one_blas_thread():
        state = _state(ws, config)
        known = _predict_state(state, config)
    rule = Prediction([UNINTERPRETABLE], 1.0, f"{state.model_version}-rule")
    return {int(f): known.get(int(f), rule) for f in features}


def out_of_fold(
    Xs: np.ndarray, y: np.ndarray, config: ALConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each labeled feature's prediction (label, probability) from a model that never saw it:
    stratified cross-validation; a fold whose training part holds one class predicts that class
    with probability 1. None when there are too few labels."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from active_learning.strategies import can_fit, make_estimator

    if not can_fit(y, config.min_labels):
        return None
    folds = min(config.cv_folds, max(Counter(y.tolist()).values()), len(y) // 2)
    if folds < 2:
        return None
    pred = np.empty(len(y), dtype=y.dtype)
    prob = np.ones(len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes rarer than the fold count
        splits = list(splitter.split(Xs, y))
    for train, test in splits:
        if len(np.unique(y[train])) < 2:
            pred[test] = y[train][0]
            continue
        model = make_estimator(config.C, config.seed).fit(Xs[train], y[train])
        proba = model.predict_proba(Xs[test])
        pred[test] = model.classes_[proba.argmax(axis=1)]
        prob[test] = proba.max(axis=1)
    return pred, prob


def heldout_macro_f1(Xs: np.ndarray, y: np.ndarray, config: ALConfig) -> float | None:
    """Cross-validated macro-F1 over the label values present (None when there are too few
    labels)."""
    from sklearn.metrics import f1_score

    oof = out_of_fold(Xs, y, config)
    if oof is None:
        return None
    present = sorted(set(y.tolist()))
    return float(f1_score(y, oof[0], labels=present, average="macro", zero_division=0))


def retrain(ws, config: ALConfig | None = None) -> LearnerReport:
    """Fit on the human gold labels of the selected SAE, estimate held-out macro-F1, and write
    Meta "learner" (with the learning curve) and "learner_predictions"."""
    config = config or ALConfig()
    with _one_blas_thread():
        state = _state(ws, config)
        X_lab, y_lab = _training(state)
        oof = out_of_fold(X_lab, y_lab, config)
        f1 = None
        predictions = _predict_state(state, config)
        if oof is not None:
            # labeled features get the prediction of a model that never saw their label, so
            # the explainer's calibration can use "the learner agrees" without leaking it
            from sklearn.metrics import f1_score

            present = sorted(set(y_lab.tolist()))
            f1 = float(f1_score(y_lab, oof[0], labels=present, average="macro", zero_division=0))
            for f, label, prob in zip(_labeled_features(state), *oof, strict=True):
                predictions[f] = Prediction([str(label)], float(prob), state.model_version)
    distribution = dict(Counter(y_lab.tolist()).most_common())
    with session_scope(ws.engine) as session:
        previous: dict[str, Any] = get_meta(session, "learner") or {}
        curve = [list(p) for p in previous.get("curve", [])]
        point = [len(y_lab), None if f1 is None else round(f1, 4)]
        if previous.get("model_version") == state.model_version and curve:
            curve[-1] = point  # a rerun on the same labels replaces, never duplicates
        else:
            curve.append(point)
        set_meta(
            session,
            "learner",
            {
                "sae_id": state.sae_id,
                "n_labels": len(y_lab),
                "macro_f1_heldout": point[1],
                "strategy": config.strategy,
                "model_version": state.model_version,
                "label_distribution": distribution,
                "curve": curve,
            },
        )
        set_meta(
            session,
            "learner_predictions",
            {
                "sae_id": state.sae_id,
                "model_version": state.model_version,
                "labeled_out_of_fold": oof is not None,
                "predictions": {
                    str(f): {"concepts": p.concepts, "probability": round(p.probability, 4)}
                    for f, p in predictions.items()
                },
            },
        )
    return LearnerReport(
        len(y_lab), f1, state.model_version, config.strategy, distribution, len(predictions)
    )
