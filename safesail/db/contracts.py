"""Typed contracts between rooms: the records one room writes and others read.

Rooms never import each other (the core imports none of them), so what they share goes
through the workspace database. Each shared record is one dataclass here, stored under its
`KEY` in the Meta table as a versioned dict: every writer builds the dataclass, every reader
gets it back through `read_record`, so a field renamed in one room fails in the tests of the
others instead of reading as a missing key. `VERSION` rises when a field changes meaning;
`from_dict` upgrades the older shapes it knows (version 0: untyped dicts, which workspaces of
older releases hold), so those workspaces keep working.

`Workspace` is the protocol the rooms program against (what `safesail.workspace.Workspace`
offers them), instead of `Any`. The labeling room's record lives in `safesail.db.labeling`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session

from safesail.db.tables import get_meta, set_meta


class Workspace(Protocol):
    """What a room may use of a workspace: its database, settings, taxonomy and the steps
    of the core pipeline (safesail.workspace.Workspace implements it)."""

    engine: Engine

    @property
    def config(self) -> Any: ...  # safesail.config.WorkspaceConfig

    @property
    def taxonomy(self) -> Any: ...  # safesail.taxonomy.Taxonomy

    @property
    def selected_sae(self) -> str | None: ...

    @property
    def model_name(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def saes(self) -> list[Any]: ...

    def landscape(self) -> dict[str, dict[str, int]]: ...

    def residual_store(self) -> Any: ...  # safesail.collection.residuals.ResidualStore | None


class MetaRecord:
    """A dataclass stored as one versioned dict under `KEY` in Meta."""

    KEY: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The record from its stored dict; keys it does not know are dropped, missing ones
        take the field default (older workspaces wrote fewer keys)."""
        return nested_record(cls, data)


R = TypeVar("R", bound=MetaRecord)
T = TypeVar("T")


def nested_record(cls: type[T], value: Any) -> T:
    """A nested record from its stored dict, keys it does not know dropped (older writers
    stored more, e.g. the labeling loop's per-concept item counts)."""
    if isinstance(value, cls):
        return value
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in value.items() if k in known})


def read_record(session: Session, cls: type[R]) -> R | None:
    """The stored record of that kind, or None until its room has run."""
    data = get_meta(session, cls.KEY)
    return cls.from_dict(data) if isinstance(data, dict) else None


def write_record(session: Session, record: MetaRecord) -> None:
    set_meta(session, record.KEY, record.to_dict())


def read_engine(engine: Engine, cls: type[R]) -> R | None:
    """`read_record` in its own short session (the app and status readers)."""
    with Session(engine) as session:
        return read_record(session, cls)


@dataclass
class CurvePoint:
    """The learner's held-out macro-F1 after n labels (None: too few labels to cross-fit)."""

    n_labels: int
    macro_f1: float | None


@dataclass
class LearnerState(MetaRecord):
    """The active learner's last fit: written by active_learning, read by the labeling room
    (is there a learner yet), status and the app (learning curve, label distribution)."""

    KEY: ClassVar[str] = "learner"

    sae_id: str | None = None
    n_labels: int = 0
    macro_f1_heldout: float | None = None
    strategy: str = ""
    strategy_version: int | None = None
    model_version: str = ""
    label_distribution: dict[str, int] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        # stored as [n, f1] pairs (version 0) or dicts (version 1)
        self.curve = [
            p
            if isinstance(p, CurvePoint)
            else nested_record(CurvePoint, p)
            if isinstance(p, dict)
            else CurvePoint(int(p[0]), p[1])
            for p in self.curve
        ]


@dataclass
class PredictedLabel:
    """The learner's label for one feature and its probability; for a labeled feature, the
    prediction of a fold model that never saw its label (when `labeled_out_of_fold`)."""

    concepts: list[str]
    probability: float
    model_version: str = ""
    """The model that made it (a cold-start prior or rule names its own version)."""
    reader_label: str | None = None
    """The reader's own first label for the feature (safesail.experts.reader, from the same
    windows; it never sees gold): the cascade accepts the model's concept only where the two
    readings agree."""
    reader_confidence: int = 0
    """The reader's 1-5 confidence in reader_label (0: no reader answer)."""


@dataclass
class LearnerPredictions(MetaRecord):
    """The learner's prediction for every feature of an SAE: written by active_learning,
    read by the explainer's calibration as one signal among others."""

    KEY: ClassVar[str] = "learner_predictions"

    sae_id: str | None = None
    model_version: str = ""
    labeled_out_of_fold: bool = False
    predictions: dict[int, PredictedLabel] = field(default_factory=dict)

    def __post_init__(self) -> None:  # JSON object keys are strings
        self.predictions = {
            int(f): nested_record(PredictedLabel, p) for f, p in self.predictions.items()
        }

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["predictions"] = {
            str(f): {
                "concepts": p.concepts,
                "probability": round(p.probability, 4),
                "model_version": p.model_version,
                "reader_label": p.reader_label,
                "reader_confidence": p.reader_confidence,
            }
            for f, p in self.predictions.items()
        }
        return out

    def usable_for(self, sae_id: str) -> dict[int, PredictedLabel]:
        """Predictions safe for calibration: this SAE's, and only when labeled features got
        out-of-fold predictions (in-sample ones would teach "the learner agrees" = "the
        expert agrees" and over-promise on unlabeled features)."""
        if self.sae_id != sae_id or not self.labeled_out_of_fold:
            return {}
        return self.predictions


@dataclass
class ReliabilityBin:
    """Held-out predicted P(agree) vs observed agreement in one probability bin."""

    lo: float
    hi: float
    n: int
    mean_probability: float
    agreement: float


@dataclass
class StageReport:
    """One stage of the explainer's cascade: its threshold, chosen by fixed-sequence testing on
    the gold features that reached it, what it guarantees and what it cost."""

    name: str
    """concept_model | llm | escalate."""
    model_version: str = ""
    """The model (and prompt) whose answers the stage judges; acceptances of another version
    are stale."""
    delta: float = 0.1
    """This stage's share of the cascade's delta (Bonferroni)."""
    threshold: float | None = None
    """Accept at confidence >= this (None: the stage accepts nothing)."""
    n_gold: int = 0
    """Gold features that reached the stage (its calibration set)."""
    gold_accepted: int = 0
    gold_errors: int = 0
    p_value: float | None = None
    bound: float | None = None
    """1 - delta lower bound on the agreement of what the stage accepts (None: accepts nothing)."""
    needed: int = 0
    """Gold features the first tested threshold must accept (ln delta / ln target)."""
    reached: int = 0
    """Routed (unlabeled) features that reached the stage."""
    accepted: int = 0
    accepted_safety: int = 0
    """Of the accepted, those whose concept is a safety concept (a "benign" or "uninterpretable"
    acceptance is not safety coverage)."""
    tokens: int = 0
    """LLM tokens spent on the features that reached the stage."""
    seconds: float = 0.0
    """LLM seconds spent on them."""
    note: str | None = None
    """Why the stage did not run or accepts nothing."""
    reliability: list[ReliabilityBin] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reliability = [nested_record(ReliabilityBin, b) for b in self.reliability]


@dataclass
class CalibrationReport(MetaRecord):
    """The explainer's last calibration and routing: written by the explainer, read by
    status, the CLI summary, the app and the exports. What it guarantees: with probability
    >= 1 - delta, the agreement with the experts of all `accepted` features is >= `target`,
    for routed features exchangeable with the gold ones."""

    KEY: ClassVar[str] = "calibration"
    VERSION: ClassVar[int] = 2

    sae_id: str | None = None
    """The SAE whose features were routed."""
    target: float = 0.9
    delta: float = 0.1
    model: str = ""
    model_version: str = ""
    calibration_version: str = ""
    """Changes with the gold set, the stages' versions and thresholds: an acceptance made under
    another calibration version is stale, never coverage."""
    n_gold: int = 0
    routed: int = 0
    """Unlabeled features the cascade routed."""
    accepted: int = 0
    accepted_safety: int = 0
    queued: int = 0
    """Routed features no stage accepted: the human queue (`HumanQueue`)."""
    stale: int = 0
    """Acceptances of an earlier model, prompt or calibration, no longer counted."""
    coverage: float = 0.0
    """accepted / routed."""
    safety_coverage: float = 0.0
    """accepted_safety / routed."""
    gold_agreement_rate: float | None = None
    """Share of the gold features whose LLM answer agrees with the experts (no threshold)."""
    needed: int | None = None
    """Gold labels the first stage needs before it can accept anything (set when short)."""
    error: str | None = None
    stages: list[StageReport] = field(default_factory=list)
    reliability_png: str | None = None

    def __post_init__(self) -> None:
        self.stages = [nested_record(StageReport, s) for s in self.stages]

    @property
    def reliability_path(self) -> Path | None:
        return Path(self.reliability_png) if self.reliability_png else None


@dataclass
class QueuedFeature:
    """A routed feature no stage of the explainer's cascade accepted."""

    feature: int
    reason: str
    """not accepted | stale | failed | not explained."""
    confidences: dict[str, float] = field(default_factory=dict)
    """Stage name -> the feature's confidence there (the stages it reached)."""


@dataclass
class HumanQueue(MetaRecord):
    """The features the explainer routes to people: written by the explainer at every routing,
    read by the labeling room (which pushes them to Label Studio in the learner's order) and
    the app. Gold features are never in it; a stale acceptance puts its feature back."""

    KEY: ClassVar[str] = "human_queue"

    sae_id: str | None = None
    calibration_version: str = ""
    features: list[QueuedFeature] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.features = [nested_record(QueuedFeature, q) for q in self.features]

    def indices(self, sae_id: str) -> list[int]:
        """The queued features of this SAE (none when the queue belongs to another SAE)."""
        return [q.feature for q in self.features] if self.sae_id == sae_id else []


@dataclass(frozen=True)
class LearnerQuery:
    """One feature worth an expert's time next, and why (the strategy and its score)."""

    sae_id: str
    feature: int
    score: float | None
    strategy: str


@dataclass(frozen=True)
class FitReport:
    """What one fit of the learner learned."""

    n_labels: int
    macro_f1_heldout: float | None
    model_version: str
    strategy: str
    label_distribution: dict[str, int]
    n_predictions: int


class Learner(Protocol):
    """The active learner as other rooms use it (label-studio-ml-backend's setup / fit /
    predict shape): built once per SAE and label state by the factory a plugin offers
    (`safesail.plugins.find_learner`), so the labeling room never imports active_learning."""

    @property
    def model_version(self) -> str:
        """Changes whenever the SAE, the labels or the settings change."""
        ...

    def fit(self) -> FitReport:
        """Fit on the current human labels; stores LearnerState and LearnerPredictions."""
        ...

    def predict(self, features: list[int]) -> dict[int, PredictedLabel]: ...

    def query(self, n: int, exclude: set[int] | None = None) -> list[LearnerQuery]: ...


LearnerFactory = Callable[[Workspace, str | None], Learner]
"""(workspace, query strategy name or None for the default) -> a learner for its selected SAE."""
