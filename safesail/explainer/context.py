"""The one record a `safesail explain` run carries through its steps (gather, explain, score,
store, route, report), instead of the same ten arguments handed from function to function."""

from __future__ import annotations

from dataclasses import dataclass

from safesail.db.contracts import Workspace
from safesail.db.queries import require_selected_sae
from safesail.errors import SafesailError
from safesail.explainer.config import ExplainConfig, LlmConfig


@dataclass(frozen=True)
class RunContext:
    """Everything fixed for one run: where, with which settings and model, over which labels."""

    ws: Workspace
    config: ExplainConfig
    llm: LlmConfig
    sae_id: str
    """The selected SAE, whose features are explained."""
    model: str
    """The model that answers (the endpoint's name for it)."""
    version: str
    """model/prompt/votes version of the LLM stage: explanations of another version are
    neither reused nor routed, and their acceptances are stale."""
    labels: list[str]
    """Taxonomy labels an explanation may name (the safety concepts, benign, uninterpretable)."""
    concepts: list[str]
    """Taxonomy concepts, the columns of a feature's profile."""
    escalate: LlmConfig | None = None
    """The stronger endpoint of the cascade's third stage (None: no such stage)."""
    progress: bool = True

    @property
    def escalate_version(self) -> str | None:
        """model/prompt/votes version of the escalation stage (None without one)."""
        if self.escalate is None:
            return None
        return f"{self.escalate.resolved_model}/{self.config.answer_version}"

    @classmethod
    def start(
        cls,
        ws: Workspace,
        config: ExplainConfig,
        llm: LlmConfig,
        progress: bool = True,
        escalate: LlmConfig | None = None,
    ) -> RunContext:
        """The run's context; refuses before anything is spent when a scorer is not registered,
        no SAE is selected, a model has no price (a paid endpoint is never reported as free) or
        the escalation endpoint is not a separate, configured one."""
        from safesail.explainer.scorers import scorer_names

        unknown = set(config.scorers) - set(scorer_names())
        if unknown:
            raise SafesailError(
                f"unknown scorers: {sorted(unknown)} — pick --scorer from {', '.join(scorer_names())}"
            )
        sae_id = require_selected_sae(ws.engine)
        model = llm.resolved_model
        llm.price()
        if escalate is not None:
            if escalate.resolved_base_url is None:
                raise SafesailError(
                    "the escalation stage has no endpoint of its own — give --escalate-base-url"
                )
            escalate.price()
            if escalate.resolved_model == model:
                raise SafesailError(
                    f"the escalation model is the first LLM stage's ({model}) — give a stronger "
                    "one with --escalate-model"
                )
        return cls(
            ws=ws,
            config=config,
            llm=llm,
            sae_id=sae_id,
            model=model,
            version=f"{model}/{config.answer_version}",
            labels=ws.taxonomy.label_values(),
            concepts=list(ws.taxonomy.concepts),
            escalate=escalate,
            progress=progress,
        )
