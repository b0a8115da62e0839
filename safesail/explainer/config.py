"""Settings of the explainer: the LLM endpoint, the prompts, the scorers and the calibration."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safesail.errors import SafesailError

EMBEDDED_ALIAS = "smollm2-135m-instruct"
"""Model name the embedded llama.cpp server answers to."""

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    EMBEDDED_ALIAS: (0.0, 0.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
"""USD per million (prompt, completion) tokens; a local model must be listed with zeros."""

Prompting = Literal["ours", "baseline"]
StructuredMode = Literal["json_object_schema", "json_object"]


def load_prices(path: Path | None) -> dict[str, tuple[float, float]]:
    """The default price table, overridden by a JSON file {model: [prompt, completion]}."""
    prices = dict(DEFAULT_PRICES)
    path = path or (Path(p) if (p := os.environ.get("SAFESAIL_LLM_PRICES")) else None)
    if path is None:
        return prices
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        prices.update({str(k): (float(v[0]), float(v[1])) for k, v in raw.items()})
    except (OSError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise SafesailError(
            f"bad price table {path} ({exc}) — write it as JSON "
            "{model: [usd_per_M_prompt, usd_per_M_completion]}"
        ) from None
    return prices


@dataclass(frozen=True)
class LlmConfig:
    """Which OpenAI-compatible endpoint answers, and how politely we ask it."""

    base_url: str | None = None
    """Endpoint URL (…/v1); None: $SAFESAIL_LLM_BASE_URL, else the embedded llama.cpp server."""
    model: str | None = None
    """Model name at the endpoint; None: $SAFESAIL_LLM_MODEL, else the embedded model."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key (local servers need none)."""
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    """USD per million (prompt, completion) tokens per model."""
    structured: StructuredMode = "json_object_schema"
    """json_object_schema: llama.cpp/vLLM style schema-constrained JSON; json_object: plain JSON
    mode (OpenAI), the schema is only described in the prompt."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    max_retries: int = 4
    """Retries on timeouts, connection errors, 429 and 5xx answers (exponential backoff)."""
    backoff_s: float = 0.5
    """First backoff; doubles per retry (a 429's Retry-After wins when given)."""
    invalid_retries: int = 2
    """Extra attempts (another seed, some temperature) when the answer is not valid JSON."""
    concurrency: int = 2
    """Features explained at once (threads) at a configured endpoint; the embedded server is
    sent one at a time (see explainer.pipeline._workers)."""
    requests_per_second: float | None = None
    """Rate limit on request starts; None: unlimited."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff_s >= 0")
        if self.max_retries < 0 or self.invalid_retries < 0 or self.concurrency < 1:
            raise ValueError("max_retries, invalid_retries must be >= 0, concurrency >= 1")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ValueError("requests_per_second must be > 0")

    @property
    def resolved_model(self) -> str:
        return self.model or os.environ.get("SAFESAIL_LLM_MODEL") or EMBEDDED_ALIAS

    @property
    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("SAFESAIL_LLM_BASE_URL")

    def price(self) -> tuple[float, float]:
        """(prompt, completion) USD per million tokens; a model missing from the table is an
        error rather than a silent zero, so a paid endpoint is never reported as free."""
        model = self.resolved_model
        if model not in self.prices:
            raise SafesailError(
                f"no price for model '{model}' in the price table — add it with --price-table FILE "
                f'(JSON {{"{model}": [usd_per_M_prompt, usd_per_M_completion]}}, zeros for a local model)'
            )
        return self.prices[model]


@dataclass(frozen=True)
class ExplainConfig:
    """What to explain, how prompts are built, and when an explanation is accepted."""

    limit: int | None = None
    """An LLM stage asks about at most this many unlabeled candidates per run (highest safety
    score first, among those no earlier stage accepts)."""
    max_gold: int | None = None
    """An LLM stage asks about at most this many gold-labeled features per run (the
    yardstick, among those no earlier stage accepts); None: all."""
    ask_unprovable: bool = False
    """Ask an LLM stage about the routed features even when its gold answers accept nothing.
    Off by default: such answers cannot be accepted, so the calls buy no coverage. On: the
    answers are drafts people see beside the queued features (and a way to inspect a model
    before there is gold to calibrate it)."""
    prompting: Prompting = "ours"
    """ours: marked segments + nearest gold few-shot + corpus evidence line; baseline:
    delphi-style whole contexts."""
    n_shown: int = 5
    """Top contexts shown to the explainer (ours); the baseline shows the whole explain split."""
    max_explain_split: int = 10
    """Top contexts reserved for explaining; the rest (and deciles, non-activating) score it."""
    window_left: int = 8
    """Tokens kept before the peak activation in a segment."""
    window_right: int = 3
    """Tokens kept after the peak activation in a segment."""
    mark_fraction: float = 0.5
    """Tokens at or above this share of the context's max activation are marked <<like this>>."""
    few_shot: int = 2
    """Nearest gold-labeled features shown as worked examples (ours)."""
    evidence: bool = True
    """Show the corpus concept tags of the explain split's texts vs. their base rates (ours)."""
    max_tokens: int = 72
    """Completion budget of an explanation (short: ~90 tokens/s on a CPU)."""
    scorers: tuple[str, ...] = ("embedding",)
    """Registered scorers (safesail.explainer.scorers) run on held-out contexts, in this order:
    measurements stored and exported beside the answer, not what acceptance is decided on (the
    votes are), so the default is the one that needs no LLM call; add detection, fuzzing,
    simulation or intruder with --scorer. The names are checked against the registry when a
    run starts (`RunContext.start`), so these settings import nothing from the explainer."""
    intruder_shown: int = 4
    """Texts per intruder question: one non-activating among this many minus one activating
    (chance 1/this); at most n_score_pos + 1 are shown."""
    n_score_pos: int = 4
    """Held-out activating contexts per scorer."""
    n_score_neg: int = 4
    """Non-activating texts per scorer (detection, simulation, embedding)."""
    target: float = 0.9
    """Agreement with the experts that the accepted features must reach (1 - alpha)."""
    delta: float = 0.1
    """Allowed chance that the accepted features' agreement is below target; split over the
    cascade's stages (Bonferroni)."""
    topic_share: float = 0.8
    """The concept model's stage does not accept a feature when at least this share of its top
    windows, each read whole, read as a safety concept other than its answer: a construction
    (the token everyday, the text around it not), which readers label by the text. 0.8 is all
    but one of five windows, the reader's own "all but one" confidence step."""
    votes: int = 5
    """Answers an LLM stage asks per feature (attempt 0 greedy, the rest sampled): the share
    agreeing with the most common concept is its confidence (Trust or Escalate's simulated
    annotators)."""
    seed: int = 0
    """Seed for sampling non-activating texts and fuzzed markings."""

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError(f"target must be in (0, 1), got {self.target}")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if self.n_shown < 1 or self.max_explain_split < 1 or self.max_tokens < 16:
            raise ValueError("n_shown, max_explain_split must be >= 1, max_tokens >= 16")
        if self.window_left < 0 or self.window_right < 0 or not 0 < self.mark_fraction <= 1:
            raise ValueError("windows must be >= 0 and mark_fraction in (0, 1]")
        if self.few_shot < 0 or self.n_score_pos < 1 or self.n_score_neg < 0:
            raise ValueError("few_shot, n_score_neg must be >= 0, n_score_pos >= 1")
        if self.intruder_shown < 2:
            raise ValueError("intruder_shown must be >= 2 (an intruder and an activating text)")
        if not 0 < self.topic_share <= 1:
            raise ValueError(f"topic_share must be in (0, 1], got {self.topic_share}")
        if not 0 < self.delta < 1 or self.votes < 1:
            raise ValueError(
                f"delta must be in (0, 1) and votes >= 1, got {self.delta}, {self.votes}"
            )

    @property
    def prompt_version(self) -> str:
        """Changes whenever the prompt text or its inputs change, so caches and rows stay apart."""
        if self.prompting == "baseline":
            return f"baseline-v3-s{self.max_explain_split}"
        return (
            f"seg-v4-n{self.n_shown}-w{self.window_left}.{self.window_right}"
            f"-m{self.mark_fraction}-f{self.few_shot}-e{int(self.evidence)}"
        )

    @property
    def answer_version(self) -> str:
        """The prompt version and the number of votes: a vote share out of another number of
        votes is another confidence scale, so its acceptances are not reused."""
        return f"{self.prompt_version}-v{self.votes}"
