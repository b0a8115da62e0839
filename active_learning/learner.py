"""The active learner over SAE features: which features are worth an expert's label next, and
what the current model predicts for the rest.

`ActiveLearner` is the object other rooms get through `safesail.plugins.find_learner`
(safesail.db.contracts.Learner, label-studio-ml-backend's setup / fit / predict shape): built once
per SAE and label state, so one `label push` asks it for a batch and its predictions without
reading the labels twice. Labels are primary-concept multi-class: a feature's label is the first
safety concept of its human Explanation, else "benign" (not safety-related), else
"uninterpretable". Macro-F1 is taken over the label values present.

The model is `ConceptModel` (what annotators read, see active_learning/features.py): its
out-of-fold predictions (active_learning/calibration.py) give the held-out macro-F1 and fit the
temperature that calibrates every probability it publishes, because the explainer's cascade
thresholds them. scikit-learn and modAL are imported inside the functions (the plugin imports
this module only when used).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from active_learning.calibration import OutOfFold, calibrate, macro_f1, out_of_fold
from active_learning.config import ALConfig
from active_learning.features import FeatureMatrix, feature_matrix, neighbour_columns, tag_free
from active_learning.strategies import can_fit, get_strategy, make_estimator
from safesail.db.contracts import (
    CurvePoint,
    FitReport,
    LearnerPredictions,
    LearnerQuery,
    LearnerState,
    PredictedLabel,
    Workspace,
    read_record,
    write_record,
)
from safesail.db.queries import human_labels, require_selected_sae, taken_features
from safesail.db.tables import session_scope
from safesail.errors import SafesailError
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

LEARNER_VERSION = "al3"
"""Bumped when the representation or the model changes, so model_version names change too."""


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


def _gold(session: Session, sae_id: str, values: list[str]) -> dict[int, str]:
    """Primary labels of each feature's human label (queries.human_labels: the latest accepted)."""
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


class ConceptModel:
    """The concept model of one SAE: a calibrated logistic regression over what annotators read
    (the label-free columns of the feature matrix, standardised over every feature of the SAE)
    plus, per class, how close each feature's decoder direction and activation pattern are to
    the labeled features of that class (recomputed from whichever labels it is fitted on).

    Rows are indices into `matrix.features`. Shared by the workspace learner and
    bench/label_efficiency.py, so the benchmark measures exactly this model."""

    def __init__(self, matrix: FeatureMatrix, classes: list[str], config: ALConfig) -> None:
        self.matrix, self.classes, self.config = matrix, list(classes), config
        keep = np.arange(len(matrix.columns)) if config.tag_columns else tag_free(matrix.columns)
        X = matrix.X[:, keep]
        std = X.std(axis=0)
        self.static = ((X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
        self.static_columns = [matrix.columns[i] for i in keep]

    def design(self, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Every feature's row given the labels (rows, y): the static columns and the
        standardised neighbour columns."""
        near, _ = neighbour_columns(self.matrix, rows, y, self.classes)
        std = near.std(axis=0)
        near = (near - near.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return np.hstack([self.static, near]).astype(np.float32)

    def columns(self) -> list[str]:
        return self.static_columns + neighbour_columns(self.matrix, [], [], self.classes)[1]

    def out_of_fold(self, rows: np.ndarray, y: np.ndarray) -> OutOfFold | None:
        rows = np.asarray(rows, dtype=int)
        return out_of_fold(lambda train: self.design(rows[train], y[train])[rows], y, self.config)

    def fit(self, rows: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray] | None:
        """The model fitted on every given label and the design it was fitted on; None at a
        cold start."""
        if not can_fit(y, self.config.min_labels):
            return None
        X = self.design(rows, y)
        return make_estimator(self.config.C, self.config.seed).fit(X[rows], y), X

    def predict(self, rows: np.ndarray, y: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
        """The predicted class of the target rows from a model fitted on (rows, y)."""
        fitted = self.fit(rows, y)
        if fitted is None:
            return None
        model, X = fitted
        return model.predict(X[targets])


class ActiveLearner:
    """The learner of the workspace's selected SAE, over its labels at construction
    (`setup`); build a new one after labels change."""

    def __init__(self, ws: Workspace, config: ALConfig | None = None) -> None:
        self.ws = ws
        self.config = config or ALConfig()
        self.strategy = get_strategy(self.config.strategy)
        self.setup()

    def setup(self) -> None:
        """Read the selected SAE, its feature matrix (cached in the process and under the
        workspace) and its gold labels; build every feature's row from those labels; name the
        model version after labels and settings."""
        self.sae_id = require_selected_sae(self.ws.engine)
        with _one_blas_thread():
            matrix = feature_matrix(
                self.ws.engine,
                self.sae_id,
                self.ws.taxonomy,
                self.config.seed,
                cache_dir=Path(self.ws.config.workspace) / "cache",
            )
        if not len(matrix.features):
            raise SafesailError(
                f"SAE {self.sae_id} has no features with examples — run `safesail collect` and "
                "`safesail triage`"
            )
        with Session(self.ws.engine) as session:
            self.labels = _gold(session, self.sae_id, self.ws.taxonomy.label_values())
        self.matrix = matrix
        self.concepts = ConceptModel(matrix, self.ws.taxonomy.label_values(), self.config)
        rows, y = self._training()
        with _one_blas_thread():
            self.Xs = self.concepts.design(rows, y)
        c = self.config
        key = json.dumps(
            [sorted(self.labels.items()), c.C, c.seed, c.tag_columns, LEARNER_VERSION],
            separators=(",", ":"),
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        self._model_version = f"{LEARNER_VERSION}-n{len(self.labels)}-{digest}"
        self.__dict__.pop("_fitted", None)

    @property
    def model_version(self) -> str:
        return self._model_version

    def _training(self) -> tuple[np.ndarray, np.ndarray]:
        """Matrix rows of the labeled features that have examples (in feature order), and
        their labels."""
        row_of = {int(f): i for i, f in enumerate(self.matrix.features)}
        labeled = [f for f in sorted(self.labels) if f in row_of]
        rows = np.array([row_of[f] for f in labeled], dtype=int)
        return rows, np.array([self.labels[f] for f in labeled], dtype=str)

    def query(self, n: int, exclude: set[int] | None = None) -> list[LearnerQuery]:
        """The next n features to label: none already labeled by a human, pushed to Label
        Studio, accepted automatically, or in `exclude`; best first."""
        if n < 0:
            raise SafesailError(
                f"the batch size must be >= 0, got {n} — ask for 0 or more features (--query N)"
            )
        with Session(self.ws.engine) as session:
            taken = taken_features(session, self.sae_id) | (exclude or set())
        features = self.matrix.features
        pool = np.flatnonzero(~np.isin(features, np.array(sorted(taken), dtype=np.int64)))
        rows, y = self._training()
        c = self.config
        with _one_blas_thread():
            picked = self.strategy(
                self.Xs[pool],
                self.matrix.value[pool],
                n,
                X_labeled=self.Xs[rows],
                y_labeled=y,
                C=c.C,
                seed=c.seed,
                min_labels=c.min_labels,
                committee_size=c.committee_size,
                candidate_factor=c.candidate_factor,
            )
        return [
            LearnerQuery(self.sae_id, int(features[pool[r]]), float(s), self.strategy.name)
            for r, s in zip(picked.rows, picked.scores, strict=True)
        ]

    @cached_property
    def _fitted(self) -> tuple[Any, OutOfFold | None] | None:
        """The model fitted on every gold label and the out-of-fold predictions that calibrate
        it (None when the labels are too few to cross-fit: the model's probabilities are then
        published uncalibrated and `labeled_out_of_fold` is false); None at a cold start."""
        rows, y = self._training()
        if not can_fit(y, self.config.min_labels):
            return None
        with _one_blas_thread():
            oof = self.concepts.out_of_fold(rows, y)
            return make_estimator(self.config.C, self.config.seed).fit(self.Xs[rows], y), oof

    def _predict_all(self) -> dict[int, PredictedLabel]:
        """Calibrated predictions for every feature with examples, labeled ones out of fold;
        triage's prior at a cold start."""
        features = [int(f) for f in self.matrix.features]
        fitted = self._fitted
        if fitted is None:
            version = f"{self.model_version}-prior"
            return {
                f: PredictedLabel([label], p, version)
                for f, (label, p) in zip(features, self.matrix.prior, strict=True)
            }
        model, oof = fitted
        with _one_blas_thread():
            proba = model.predict_proba(self.Xs)
        if oof is not None:
            proba = calibrate(proba, oof.temperature)
        best = proba.argmax(axis=1)
        out = {
            f: self._label(i, str(model.classes_[b]), float(proba[i, b]))
            for i, (f, b) in enumerate(zip(features, best, strict=True))
        }
        if oof is not None:
            # labeled features get the prediction of a model that never saw their label, so
            # the explainer's calibration can use "the learner agrees" without leaking it
            rows, _ = self._training()
            for r, label, prob in zip(rows, oof.labels, oof.probability, strict=True):
                out[features[r]] = self._label(int(r), str(label), float(prob))
        return out

    def _label(self, row: int, concept: str, probability: float) -> PredictedLabel:
        """The model's label of a matrix row, with the reader's own answer beside it."""
        reader, confidence = self.matrix.reader[row]
        return PredictedLabel([concept], probability, self.model_version, reader, confidence)

    def predict(self, features: list[int]) -> dict[int, PredictedLabel]:
        """The current model's label per feature; a feature without examples is uninterpretable
        by rule (nothing to show an expert)."""
        known = self._predict_all()
        rule = PredictedLabel([UNINTERPRETABLE], 1.0, f"{self.model_version}-rule")
        return {int(f): known.get(int(f), rule) for f in features}

    def fit(self) -> FitReport:
        """Fit on the gold labels, estimate held-out macro-F1 from the out-of-fold predictions,
        and store LearnerState (with the learning curve) and LearnerPredictions."""
        _, y = self._training()
        oof = self._fitted[1] if self._fitted else None
        predictions = self._predict_all()
        f1 = None if oof is None else macro_f1(y, oof.labels)
        distribution = dict(Counter(y.tolist()).most_common())
        point = CurvePoint(len(y), None if f1 is None else round(f1, 4))
        with session_scope(self.ws.engine) as session:
            previous = read_record(session, LearnerState)
            curve = list(previous.curve) if previous else []
            if previous and previous.model_version == self.model_version and curve:
                curve[-1] = point  # a rerun on the same labels replaces, never duplicates
            else:
                curve.append(point)
            write_record(
                session,
                LearnerState(
                    sae_id=self.sae_id,
                    n_labels=len(y),
                    macro_f1_heldout=point.macro_f1,
                    strategy=self.strategy.name,
                    strategy_version=self.strategy.version,
                    model_version=self.model_version,
                    label_distribution=distribution,
                    curve=curve,
                ),
            )
            write_record(
                session,
                LearnerPredictions(
                    sae_id=self.sae_id,
                    model_version=self.model_version,
                    labeled_out_of_fold=oof is not None,
                    predictions=predictions,
                ),
            )
        return FitReport(
            len(y), f1, self.model_version, self.strategy.name, distribution, len(predictions)
        )
