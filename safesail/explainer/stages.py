"""The cascade's stages and the plan routing decides, shared by routing (which decides it) and
the report (which reads it): their own module, so the report does not import routing back.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

from safesail.db.contracts import PredictedLabel
from safesail.db.tables import Explanation
from safesail.explainer.calibration import Acceptance, GoldAnswer
from safesail.explainer.context import RunContext
from safesail.explainer.materials import Gold
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

CONCEPT_MODEL, LLM, ESCALATE = "concept_model", "llm", "escalate"
"""The cascade's automatic stages, in order of cost."""
ORDER = (CONCEPT_MODEL, LLM, ESCALATE)

STALE = "stale"
"""Status of an acceptance whose model, prompt or calibration is no longer current."""


def is_safety(concept: str) -> bool:
    return concept not in (BENIGN, UNINTERPRETABLE)


class Stage(NamedTuple):
    """One automatic stage as routing sees it: its answers and the acceptance on its gold."""

    name: str
    version: str
    answers: dict[int, Explanation | PredictedLabel]
    """Feature -> the stage's answer (an LLM stage's row, or the learner's prediction)."""
    confidence: dict[int, float]
    gold: dict[int, GoldAnswer]
    asked: set[int]
    """Features the stage answered or failed to (an LLM stage's failed answers included)."""


class Plan(NamedTuple):
    """The cascade decided on what is stored: per stage its acceptance, and per feature the
    stage that accepts it."""

    stages: list[Stage]
    acceptances: list[Acceptance]
    accepted_at: dict[int, str]
    """Feature (gold or routed) -> the first stage whose threshold its confidence reaches."""
    gold: dict[int, Gold]
    fired: dict[int, list[str]]

    def reaches(self, feature: int, stage: str) -> bool:
        """Whether no stage before this one accepts the feature."""
        at = self.accepted_at.get(feature)
        return at is None or ORDER.index(at) >= ORDER.index(stage)

    def version(self, ctx: RunContext) -> str:
        """The calibration version: changes with the gold set, the stages and thresholds."""
        payload = {
            "target": ctx.config.target,
            "delta": ctx.config.delta,
            "gold": sorted((f, sorted(g.concepts), g.text) for f, g in self.gold.items()),
            "stages": [
                (s.name, s.version, a.threshold)
                for s, a in zip(self.stages, self.acceptances, strict=True)
            ],
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageCost(NamedTuple):
    tokens: int
    seconds: float
