"""Concept probes: the causal check's second measure, how an edit moves the feature's *own*
concept in the model, besides its refusal propensity.

One logistic-regression probe per safety concept reads the mean residual of a chat-formatted
text at one block's output (`CausalConfig.readout_layer`, by default the last block). The last
block because it is downstream of every SAE site, so one set of probes serves every SAE of a
workspace at every layer, and what it reads is what the model carries into its answer: an edit
whose effect the later blocks wash out does not count. The mean runs over the user text and the
template's closing tokens (not the system turn, which no prompt can change), the same readout
`RefusalMeter` takes from the held-out prompts in the forward it already runs, so the probe costs
no extra forward pass per feature.

Probes are trained on the workspace's corpus texts (concept vs every other text, benign and other
concepts; a seeded sample of `probe_texts` per concept and twice as many benign) and cached as
JSON in the workspace, keyed by the model, the readout block, the settings and the corpus itself:
trained once, reread by every later run, retrained when the corpus changes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.causal.config import CausalConfig
from safesail.causal.intervene import RefusalMeter
from safesail.causal.prompts import MAX_PROMPT_CHARS
from safesail.corpus.sources import truncate_at_word
from safesail.db.tables import CorpusText
from safesail.model.lm import LanguageModel
from safesail.taxonomy import BENIGN

PROBE_VERSION = "probe-v1"
"""Raised when how probes are trained changes (cached probes of another version are retrained)."""
MIN_CLASS_TEXTS = 8
"""A concept needs this many corpus texts with it and without it to get a probe."""
FOLDS = 4
"""Cross-validation folds of the probe's reported accuracy."""


@dataclass(frozen=True)
class ConceptProbe:
    """P(concept) of a readout: sigmoid(readout @ weights + bias), standardisation folded in."""

    concept: str
    layer: int
    weights: np.ndarray
    bias: float
    accuracy: float
    """Cross-validated balanced accuracy on its training texts (how far to trust it)."""
    n_positive: int
    n_negative: int

    def probability(self, readout: np.ndarray) -> np.ndarray:
        """P(concept) per row of readouts [n, d_model]."""
        return 1.0 / (1.0 + np.exp(-(readout.astype(np.float64) @ self.weights + self.bias)))

    def summary(self) -> dict[str, float | int]:
        """What a Score stores about the probe."""
        return {
            "layer": self.layer,
            "accuracy": round(self.accuracy, 4),
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }

    def to_json(self) -> dict:
        return {**asdict(self), "weights": self.weights.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> ConceptProbe:
        return cls(**{**data, "weights": np.asarray(data["weights"], dtype=np.float64)})


def readout_layer(lm: LanguageModel, config: CausalConfig) -> int:
    """The block the probes read: `config.readout_layer`, negative counted from the last."""
    layer = config.readout_layer % lm.n_layers if config.readout_layer < 0 else config.readout_layer
    lm.check_layer(layer)
    return layer


def _training_sample(
    rows: Sequence[tuple[int, str, list[str]]], concepts: Sequence[str], per_concept: int, seed: int
) -> list[tuple[str, set[str]]]:
    """Up to `per_concept` texts of each concept and twice as many benign ones (seeded), as
    (text cut to the prompts' length, concepts)."""
    rng = random.Random(seed)
    picked: set[int] = set()
    for concept in [*concepts, BENIGN]:
        having = sorted(i for i, (_, _, c) in enumerate(rows) if concept in c)
        limit = per_concept * (2 if concept == BENIGN else 1)
        picked.update(rng.sample(having, min(limit, len(having))))
    return [
        (truncate_at_word(rows[i][1], MAX_PROMPT_CHARS), set(rows[i][2])) for i in sorted(picked)
    ]


def _fit(concept: str, layer: int, x: np.ndarray, y: np.ndarray, seed: int) -> ConceptProbe:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    accuracy = cross_val_score(model(), x, y, cv=folds, scoring="balanced_accuracy").mean()
    fitted = model().fit(x, y)
    scaler, logistic = fitted[0], fitted[1]
    weights = logistic.coef_[0] / scaler.scale_
    bias = float(logistic.intercept_[0] - weights @ scaler.mean_)
    return ConceptProbe(
        concept, layer, weights, bias, float(accuracy), int(y.sum()), int((~y).sum())
    )


def concept_probes(
    engine: Engine,
    lm: LanguageModel,
    concepts: Sequence[str],
    config: CausalConfig,
    folder: Path,
) -> dict[str, ConceptProbe]:
    """A probe for each of `concepts` (the taxonomy's safety concepts) with enough corpus texts,
    read from the cache in `folder` or trained and cached there."""
    layer = readout_layer(lm, config)
    with Session(engine) as session:
        rows = [
            (r.id, r.text, list(r.concepts))
            for r in session.exec(select(CorpusText).order_by(CorpusText.id))
        ]
    key = hashlib.sha256(
        json.dumps(
            [PROBE_VERSION, lm.name, layer, config.probe_texts, config.seed, sorted(concepts), rows]
        ).encode()
    ).hexdigest()[:16]
    path = Path(folder) / f"probes-{key}.json"
    if path.exists():
        return {c: ConceptProbe.from_json(p) for c, p in json.loads(path.read_text()).items()}
    sample = _training_sample(rows, concepts, config.probe_texts, config.seed)
    probes: dict[str, ConceptProbe] = {}
    if sample:
        meter = RefusalMeter(
            lm, [t for t, _ in sample], batch_size=config.batch_size, readout_layer=layer
        )
        x = meter.readouts()
        for concept in concepts:
            y = np.array([concept in c for _, c in sample])
            if min(y.sum(), (~y).sum()) >= MIN_CLASS_TEXTS:
                probes[concept] = _fit(concept, layer, x, y, config.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")  # written whole, then renamed: an interrupt leaves no cache
    partial.write_text(json.dumps({c: p.to_json() for c, p in probes.items()}))
    partial.replace(path)
    return probes
