"""The labeling room's contract: `AnnotationSummary`, its Label Studio project and last pull
with the annotators' agreement, written by annotation and read by status, the app and the
exports. Apart from `safesail.db.contracts` (the records shared with the learner and the
explainer) because no core step reads it: only the rooms and status do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from safesail.db.contracts import MetaRecord, nested_record


@dataclass
class ConceptKappa:
    """Annotator agreement on one concept (None: too few overlapping items)."""

    cohen: float | None
    fleiss: float | None


@dataclass
class AnnotationSummary(MetaRecord):
    """The labeling loop's project and its last pull: written by annotation, read by status,
    the app and the exports."""

    KEY: ClassVar[str] = "annotation"

    url: str | None = None
    project: int | None = None
    sae_id: str | None = None
    title: str | None = None
    tasks: int = 0
    last_pull: str | None = None
    annotations: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    features_labeled: int = 0
    overlap_items: int = 0
    kappa: dict[str, ConceptKappa] = field(default_factory=dict)
    cohen_kappa_mean: float | None = None
    fleiss_kappa_mean: float | None = None
    adjudication: str | None = None

    def __post_init__(self) -> None:
        self.kappa = {c: nested_record(ConceptKappa, k) for c, k in self.kappa.items()}

    def kappa_per_concept(self) -> dict[str, float]:
        """Each concept's agreement: Cohen's kappa, else Fleiss' (concepts with neither left
        out)."""
        out = {}
        for concept, k in self.kappa.items():
            value = k.cohen if k.cohen is not None else k.fleiss
            if value is not None:
                out[concept] = value
        return out
