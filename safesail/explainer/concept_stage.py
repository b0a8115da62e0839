"""The cascade's first stage: the active learner's concept model, trusted only where the
readings of the feature agree.

Three readings of a feature are at hand without an LLM call: the concept model's calibrated
prediction (learned from gold), the reader's reading of what fires (safesail.experts.reader:
the marked tokens' meaning, with a 1-5 confidence) and the reader's reading of the top windows
each taken whole (`Reader.topics`). Two readings that agree err less than either alone, and
the construction features, where readers disagree with a token reading, are exactly those
whose windows read as a safety concept while the token reads everyday. So the stage's
confidence is 0 unless the model and the token reading name the same concept and the windows
do not name another safety concept; then the token reading's confidence orders, and the
model's probability breaks ties.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from safesail.db.contracts import LearnerPredictions, PredictedLabel
from safesail.experts.reader import Reader, Topic
from safesail.experts.windows import feature_windows
from safesail.explainer.agreement import agrees, draft_sentence
from safesail.explainer.calibration import GoldAnswer
from safesail.explainer.materials import Gold
from safesail.explainer.stages import CONCEPT_MODEL, Stage, is_safety
from safesail.taxonomy import Taxonomy


def concept_model_version(predictions: LearnerPredictions) -> str:
    return f"concept-model/{predictions.model_version}"


def window_topics(
    engine: Engine, sae_id: str, features: list[int], taxonomy: Taxonomy
) -> dict[int, Topic]:
    """The reader's `Topic` of each feature's top windows (those with windows)."""
    return Reader(taxonomy).topics(feature_windows(engine, sae_id, features))


def concept_model_score(
    prediction: PredictedLabel, topic: Topic | None = None, topic_share: float = 1.0
) -> float:
    """The stage's confidence, an order for fixed-sequence testing (not a probability): 0
    unless the reader's token reading names the model's concept and the windows (`topic`) do
    not read as another safety concept on `topic_share` of them or more; then the token
    reading's 1-5 confidence first and the model's calibrated probability to break ties,
    scaled into [0, 1]."""
    if not prediction.concepts or prediction.reader_label != prediction.concepts[0]:
        return 0.0
    if (
        topic is not None
        and is_safety(topic.label)
        and topic.label != prediction.concepts[0]
        and topic.share >= topic_share
    ):
        return 0.0
    return (prediction.reader_confidence + float(prediction.probability)) / 6


def concept_model_stage(
    sae_id: str,
    predictions: LearnerPredictions,
    gold: dict[int, Gold],
    fired: dict[int, list[str]],
    topics: dict[int, Topic],
    *,
    reads: set[int],
    safety: list[str],
    topic_share: float,
) -> list[Stage]:
    """The concept model's stage over the features routing `reads`, if the learner has usable
    predictions for this SAE. `safety`: the taxonomy's safety concepts."""
    # out-of-fold predictions only: in-sample ones would be fitted on the gold labels they
    # are calibrated against (LearnerPredictions.usable_for). The routed features' come from
    # the model fitted on all gold (cross-fitting): at least as good as a fold model, which is
    # what the threshold was tested on.
    usable = predictions.usable_for(sae_id)
    if not usable:
        return []
    learner = {f: p for f, p in usable.items() if f in reads}
    score = {f: concept_model_score(p, topics.get(f), topic_share) for f, p in learner.items()}
    return [
        Stage(
            CONCEPT_MODEL,
            concept_model_version(predictions),
            learner,
            score,
            {
                f: GoldAnswer(
                    score[f],
                    agrees(
                        p.concepts,
                        draft_sentence(p.concepts, fired.get(f, [])),
                        gold[f],
                        fired.get(f, []),
                        safety,
                    ),
                )
                for f, p in learner.items()
                if f in gold and p.concepts
            },
            set(learner),
        )
    ]
