"""The active learner over SAE features: which features are worth an expert's label next, and
what the current model predicts for the rest.

`ActiveLearner` is the object other rooms get through `safesail.plugins.find_learner`
(safesail.db.contracts.Learner, label-studio-ml-backend's setup / fit / predict shape): built once
per SAE and label state, so one `label push` asks it for a batch and its predictions without
reading the labels twice. Labels are primary-concept multi-class: a feature's label is the first
safety concept of its human Explanation, else "benign" (not safety-related), else
"uninterpretable". Macro-F1 is taken over the label values present. Import-light: scikit-learn
and modAL are imported inside the methods.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from active_learning.strategies import can_fit, get_strategy, make_estimator, strategy_names
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

if TYPE_CHECKING:
    import numpy as np

LEARNER_VERSION = "al1"
"""Bumped when the representation or the model changes, so model_version names change too."""


@dataclass(frozen=True)
class ALConfig:
    """How the learner fits and which strategy picks the next batch."""

    strategy: str = "diverse"
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
        if self.strategy not in strategy_names():
            raise ValueError(
                f"strategy must be one of {', '.join(strategy_names())}, got '{self.strategy}'"
            )
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.min_labels < 2 or self.committee_size < 2 or self.cv_folds < 2:
            raise ValueError("min_labels, committee_size and cv_folds must be >= 2")
        if self.candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {self.candidate_factor}")


@dataclass
class Prediction(PredictedLabel):
    """A PredictedLabel that also names the model that made it: the fitted model's version,
    with "-prior" (triage's guess at a cold start) or "-rule" (no examples) appended, which the
    labeling room shows as the pre-annotation's model_version."""

    model_version: str = ""


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


class ActiveLearner:
    """The learner of the workspace's selected SAE, over its labels at construction
    (`setup`); build a new one after labels change."""

    def __init__(self, ws: Workspace, config: ALConfig | None = None) -> None:
        self.ws = ws
        self.config = config or ALConfig()
        self.strategy = get_strategy(self.config.strategy)
        self.setup()

    def setup(self) -> None:
        """Read the selected SAE, its feature matrix (cached per process) and its gold labels;
        standardise the rows; name the model version after labels and settings."""
        import numpy as np

        from active_learning.features import feature_matrix

        self.sae_id = require_selected_sae(self.ws.engine)
        with _one_blas_thread():
            matrix = feature_matrix(self.ws.engine, self.sae_id, self.ws.taxonomy, self.config.seed)
        if not len(matrix.features):
            raise SafesailError(
                f"SAE {self.sae_id} has no features with examples: run `safesail collect` and "
                "`safesail triage`"
            )
        with Session(self.ws.engine) as session:
            self.labels = _gold(session, self.sae_id, self.ws.taxonomy.label_values())
        std = matrix.X.std(axis=0)
        Xs = (matrix.X - matrix.X.mean(axis=0)) / np.where(std > 0, std, 1.0)
        self.matrix, self.Xs = matrix, Xs.astype(np.float32)
        key = json.dumps(
            [sorted(self.labels.items()), self.config.C, self.config.seed, LEARNER_VERSION],
            separators=(",", ":"),
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        self._model_version = f"{LEARNER_VERSION}-n{len(self.labels)}-{digest}"
        self.__dict__.pop("_model", None)

    @property
    def model_version(self) -> str:
        return self._model_version

    def _labeled_rows(self) -> list[int]:
        """Matrix rows of the labeled features that have examples, in feature order."""
        row_of = {int(f): i for i, f in enumerate(self.matrix.features)}
        return [row_of[f] for f in sorted(self.labels) if f in row_of]

    def _training(self) -> tuple[np.ndarray, np.ndarray]:
        """The standardised rows and labels of the labeled features that have examples."""
        import numpy as np

        rows = self._labeled_rows()
        features = self.matrix.features
        y = np.array([self.labels[int(features[r])] for r in rows], dtype=object)
        return self.Xs[rows], y.astype(str)

    def query(self, n: int, exclude: set[int] | None = None) -> list[LearnerQuery]:
        """The next n features to label: none already labeled by a human, pushed to Label
        Studio, accepted automatically, or in `exclude`; best first."""
        import numpy as np

        if n < 0:
            raise SafesailError(f"the batch size must be >= 0, got {n}")
        with Session(self.ws.engine) as session:
            taken = taken_features(session, self.sae_id) | (exclude or set())
        features = self.matrix.features
        pool = np.flatnonzero(~np.isin(features, np.array(sorted(taken), dtype=np.int64)))
        X_lab, y_lab = self._training()
        c = self.config
        with _one_blas_thread():
            picked = self.strategy(
                self.Xs[pool],
                self.matrix.value[pool],
                n,
                X_labeled=X_lab,
                y_labeled=y_lab,
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
    def _model(self) -> Any | None:
        """The model fitted on every gold label; None at a cold start."""
        X_lab, y_lab = self._training()
        if not can_fit(y_lab, self.config.min_labels):
            return None
        with _one_blas_thread():
            return make_estimator(self.config.C, self.config.seed).fit(X_lab, y_lab)

    def _predict_all(self) -> dict[int, Prediction]:
        """Predictions for every feature with examples: the fitted model, or triage's prior at
        a cold start."""
        features = [int(f) for f in self.matrix.features]
        model = self._model
        if model is None:
            version = f"{self.model_version}-prior"
            return {
                f: Prediction([label], p, version)
                for f, (label, p) in zip(features, self.matrix.prior, strict=True)
            }
        with _one_blas_thread():
            proba = model.predict_proba(self.Xs)
        best = proba.argmax(axis=1)
        return {
            f: Prediction([str(model.classes_[b])], float(proba[i, b]), self.model_version)
            for i, (f, b) in enumerate(zip(features, best, strict=True))
        }

    def predict(self, features: list[int]) -> dict[int, Prediction]:
        """The current model's label per feature; a feature without examples is uninterpretable
        by rule (nothing to show an expert)."""
        known = self._predict_all()
        rule = Prediction([UNINTERPRETABLE], 1.0, f"{self.model_version}-rule")
        return {int(f): known.get(int(f), rule) for f in features}

    def fit(self) -> FitReport:
        """Fit on the gold labels, estimate held-out macro-F1, and store LearnerState (with the
        learning curve) and LearnerPredictions."""
        X_lab, y_lab = self._training()
        with _one_blas_thread():
            oof = out_of_fold(X_lab, y_lab, self.config)
        predictions = self._predict_all()
        f1 = None
        if oof is not None:
            # labeled features get the prediction of a model that never saw their label, so
            # the explainer's calibration can use "the learner agrees" without leaking it
            f1 = _macro_f1(y_lab, oof[0])
            labeled = [int(self.matrix.features[r]) for r in self._labeled_rows()]
            for f, label, prob in zip(labeled, *oof, strict=True):
                predictions[f] = Prediction([str(label)], float(prob), self.model_version)
        distribution = dict(Counter(y_lab.tolist()).most_common())
        point = CurvePoint(len(y_lab), None if f1 is None else round(f1, 4))
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
                    n_labels=len(y_lab),
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
                    predictions={
                        f: PredictedLabel(p.concepts, p.probability) for f, p in predictions.items()
                    },
                ),
            )
        return FitReport(
            len(y_lab), f1, self.model_version, self.strategy.name, distribution, len(predictions)
        )


def out_of_fold(
    Xs: np.ndarray, y: np.ndarray, config: ALConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each labeled feature's prediction (label, probability) from a model that never saw it:
    stratified cross-validation; a fold whose training part holds one class predicts that class
    with probability 1. None when there are too few labels."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

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


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the label values present in y."""
    from sklearn.metrics import f1_score

    present = sorted(set(y.tolist()))
    return float(f1_score(y, pred, labels=present, average="macro", zero_division=0))


def heldout_macro_f1(Xs: np.ndarray, y: np.ndarray, config: ALConfig) -> float | None:
    """Cross-validated macro-F1 over the label values present (None when there are too few
    labels)."""
    oof = out_of_fold(Xs, y, config)
    return None if oof is None else _macro_f1(y, oof[0])
