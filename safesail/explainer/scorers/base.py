"""The scorer registry (delphi's `Scorer` class, SAELens' registry idiom): one class per scorer,
registered once under its name, so the settings' validation, the CLI's `--scorer` choices and
the stored Score rows all come from the class instead of a list of names kept in three places.

A scorer is built per run with the run's client and settings and called once per explanation
with a `ScoringRecord`; its `version` lands in the Score rows, so scores of a changed scorer
never pass for the old one's. Registering a second scorer under a taken name is an error:
silently replacing one would change every score that name stands for.

Import-light on purpose: the registry's names are what a run's start (`RunContext.start`)
checks `ExplainConfig.scorers` against and what the CLI offers as `--scorer` choices, so it
imports none of the explainer's other modules at runtime (the settings import nothing from the
explainer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from safesail.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from safesail.explainer.clients import LlmClient
    from safesail.explainer.config import ExplainConfig
    from safesail.explainer.explainers import Shown


class ScoreResult(NamedTuple):
    """One scorer's value (None when the scorer's answer stayed invalid) and what it saw."""

    scorer: str
    value: float | None
    details: dict[str, Any]


class ScoringRecord(NamedTuple):
    """One explanation and the held-out material it is scored on (delphi's latent record): the
    texts as the scorer shows them (segments, or whole contexts for the baseline prompts)."""

    explanation: str
    positives: list[Shown]
    """Held-out activating texts."""
    negatives: list[Shown]
    """Texts the feature does not fire on."""
    sae_id: str
    feature: int
    rng: np.random.Generator
    """Seeded per feature and shared by the run's scorers in order, so reruns score alike."""


class Scorer(ABC):
    """Scores an explanation on contexts the explainer never saw."""

    name: ClassVar[str]
    """The name settings, flags and Score rows use."""
    version: ClassVar[str]
    """Changes whenever the scorer's prompt or arithmetic changes (stored with each score)."""
    needs_llm: ClassVar[bool] = True
    """False for a scorer that calls no model (its scores carry no model name)."""

    def __init__(self, client: LlmClient | None, config: ExplainConfig) -> None:
        if self.needs_llm and client is None:
            raise ValueError(f"the {self.name} scorer needs an LLM client")
        self.client = client
        self.config = config

    @abstractmethod
    def __call__(self, record: ScoringRecord) -> ScoreResult: ...

    @classmethod
    def stored_version(cls, prompt_version: str) -> str:
        """The Score row's prompt_version: an LLM scorer's answers also depend on how the
        texts were shown (the explainer's `prompt_version`), a model-free one only on itself."""
        if not cls.needs_llm:
            return cls.version
        return f"{cls.name}-{cls.version}/{prompt_version}"


SCORERS: Registry[type[Scorer]] = Registry("scorer")
register_scorer = SCORERS.register
scorer_names = SCORERS.names
get_scorer = SCORERS.get
