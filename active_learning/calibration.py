"""Out-of-fold predictions of the concept model and the temperature that calibrates them.

Every probability the learner publishes is thresholded by the explainer's cascade, so it must
mean what it says: a logistic regression on few labels is over-confident, and each labeled
feature's prediction must come from a model that never saw its label. Stratified
cross-validation gives both the held-out macro-F1 and the out-of-fold probabilities one
temperature is fitted on. scikit-learn and scipy are imported inside the functions.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from active_learning.config import ALConfig
from active_learning.strategies import can_fit, make_estimator


class OutOfFold(NamedTuple):
    """Each labeled feature's prediction from a model that never saw its label."""

    labels: np.ndarray  # predicted class per labeled feature
    probability: np.ndarray  # its calibrated probability
    proba: np.ndarray  # raw (uncalibrated) probabilities, (n_labeled, len(classes))
    classes: np.ndarray  # the classes present in the labels, sorted
    temperature: float  # fitted on these out-of-fold probabilities


def fit_temperature(proba: np.ndarray, y_index: np.ndarray) -> float:
    """The temperature T minimising the log-loss of softmax(log p / T) on out-of-fold
    probabilities: one parameter, so a few dozen labels fit it without over-fitting, and it
    keeps every argmax (the predicted concept never changes, only how sure it is). A logistic
    regression on few labels is over-confident; the explainer's cascade thresholds these
    probabilities, so they must mean what they say."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(proba, 1e-9, 1.0))

    def loss(log_t: float) -> float:
        return -float(np.mean(_log_softmax(logp / np.exp(log_t))[np.arange(len(y_index)), y_index]))

    return float(np.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded").x))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def calibrate(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled by a fitted temperature (rows still sum to 1)."""
    return np.exp(_log_softmax(np.log(np.clip(proba, 1e-9, 1.0)) / temperature))


def out_of_fold(
    Xs: np.ndarray | Callable[[np.ndarray], np.ndarray], y: np.ndarray, config: ALConfig
) -> OutOfFold | None:
    """Each labeled feature's prediction (label, calibrated probability) from a model that never
    saw it: stratified cross-validation; a fold whose training part holds one class predicts
    that class. `Xs` is the labeled rows, or a function of a fold's training indices giving the
    labeled rows built from that fold's labels only (the neighbour columns read labels: built
    from all of them, a held-out feature would see its own label). None when there are too
    few labels."""
    from sklearn.model_selection import StratifiedKFold

    if not can_fit(y, config.min_labels):
        return None
    folds = min(config.cv_folds, max(Counter(y.tolist()).values()), len(y) // 2)
    if folds < 2:
        return None
    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes rarer than the fold count
        splits = list(splitter.split(np.zeros(len(y)), y))
    for train, test in splits:
        if len(np.unique(y[train])) < 2:
            proba[test, np.searchsorted(classes, y[train][0])] = 1.0
            continue
        X = Xs(train) if callable(Xs) else Xs
        model = make_estimator(config.C, config.seed).fit(X[train], y[train])
        proba[np.ix_(test, np.searchsorted(classes, model.classes_))] = model.predict_proba(X[test])
    y_index = np.searchsorted(classes, y)
    temperature = fit_temperature(proba, y_index)
    calibrated = calibrate(proba, temperature)
    best = proba.argmax(axis=1)
    return OutOfFold(
        classes[best], calibrated[np.arange(len(y)), best], proba, classes, temperature
    )


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the label values present in y."""
    from sklearn.metrics import f1_score

    present = sorted(set(y.tolist()))
    return float(f1_score(y, pred, labels=present, average="macro", zero_division=0))


def heldout_macro_f1(Xs: np.ndarray, y: np.ndarray, config: ALConfig) -> float | None:
    """Cross-validated macro-F1 over the label values present (None when there are too few
    labels)."""
    oof = out_of_fold(Xs, y, config)
    return None if oof is None else macro_f1(y, oof.labels)
