"""The one record model of the gold set, read from and written back to the workspace database.

Every format writes and reads `ExportRecord`s, so provenance (who / which model), tags, scores,
agreement and Label Studio ids are gathered in one place and every format loses only what its
layout cannot hold. `exports.gather` reads them out of the database, `exports.importing`
writes them back; both keep `IMPORTED` in step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import selected_sae
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError

GOLD_SOURCES = ("human", "auto")
"""Sources of the gold set; imported priors are exported only on request."""
IMPORTED = "imported"
"""Key in Explanation.details holding the provenance an import could not store in its own
tables (Label Studio ids, agreement), so that export -> import -> export gives the same record."""


@dataclass
class ExportRecord:
    """One explanation of one SAE feature, with everything a consumer of the gold set needs."""

    sae_id: str
    """The SAE's id in the workspace."""
    index: int
    """The feature's index in the SAE."""
    explanation: str
    """The explanation text."""
    concepts: list[str]
    """Concept tags (taxonomy names, "uninterpretable")."""
    source: str = "prior"
    """human | auto | prior."""
    status: str = "accepted"
    """accepted | queued | rejected | failed | stale (an acceptance no longer current)."""
    layer: int | None = None
    """The block the SAE reads."""
    d_sae: int | None = None
    """The SAE's width."""
    model: str | None = None
    """The language model the SAE belongs to."""
    author: str | None = None
    """Annotator(s) for human labels, the LLM for automatic ones."""
    model_version: str | None = None
    """Explainer / prompt version, or the Label Studio project for human labels."""
    confidence: float | None = None
    """The annotator's or explainer's own confidence."""
    probability: float | None = None
    """Automatic labels: the confidence of the cascade stage that judged it (the learner's
    probability, or the share of the LLM's votes for its concept)."""
    stage: str | None = None
    """Automatic labels: the cascade stage that made it (concept_model, llm, escalate)."""
    bound: float | None = None
    """Accepted automatic labels: the 1 - delta lower bound on agreement with the experts that
    the stage's threshold was proven at (fixed-sequence testing on gold)."""
    agreement: float | None = None
    """Share of this feature's annotators who gave exactly the final label (human labels only:
    an automatic label's guarantee is `bound`, its stage confidence `probability`)."""
    kappa: float | None = None
    """Annotator agreement (Cohen/Fleiss kappa) of the label's concept, from the labeling loop."""
    created_at: str | None = None
    """ISO time the explanation was made."""
    scores: list[dict[str, Any]] = field(default_factory=list)
    """One {scorer, value, model, prompt_version} per scorer; the causal check's
    (`causal_refusal_delta`) also has `details`: interval, alphas, ablation and steering
    effects, the same effects on P(concept) per label concept (`concept`), prompts."""
    ls_project: str | None = None
    """Label Studio project ("<server url>#<project id>")."""
    ls_task_id: int | None = None
    """Label Studio task id of the feature."""
    ls_annotation_ids: list[int] = field(default_factory=list)
    """Label Studio annotation ids behind a human label."""
    annotators: list[str] = field(default_factory=list)
    """Who annotated the feature."""
    details: dict[str, Any] | None = None
    """The explanation's details (reason of a failure, explainer extras)."""

    def key(self) -> tuple:
        """Identity for idempotent imports: the same explanation of the same feature."""
        return (self.sae_id, self.index, self.source, self.text_key(), self.author)

    def text_key(self) -> str:
        return self.explanation.strip()

    def score(self, *preferred: str) -> float | None:
        """The first of the preferred scorers present, else the first score, else None."""
        by_name = {s["scorer"]: s["value"] for s in self.scores}
        for name in preferred:
            if name in by_name:
                return by_name[name]
        return self.scores[0]["value"] if self.scores else None


FIELDS = tuple(f.name for f in dataclasses.fields(ExportRecord))
"""Field names in declaration order (the column order of tabular formats)."""


def require_sae(engine: Engine, sae_id: str | None) -> SaeRecord:
    """The SAE an import targets: the one named, else the selected one."""
    with Session(engine) as session:
        chosen = sae_id or selected_sae(session)
        if chosen is None:
            raise SafesailError("no SAE given and none selected — pass --sae ID")
        record = session.get(SaeRecord, chosen)
        if record is None:
            known = ", ".join(r.id for r in session.exec(select(SaeRecord))) or "none"
            raise SafesailError(f"unknown SAE '{chosen}' — pass --sae one of: {known}")
        return record
