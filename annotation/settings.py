"""The settings of `label push` and `label simulate` (and the demo's rounds), declared once:
the command line derives its flags from them (safesail.cli.flags) and the functions validate
their arguments with them. Kept free of heavy imports so building the CLI stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from annotation.label_interface import EXPERTS, READER, Expert

LISTEN_PORT = 8766
"""`label listen`'s default port (8765 is the embedded LLM server's)."""


@dataclass(frozen=True)
class PushConfig:
    """What one push sends."""

    batch: int = 20
    """Features per batch."""
    strategy: str | None = None
    """Active-learning query strategy (default: the learner's)."""
    overlap: float = 0.2
    """Share of tasks for 2 annotators (fixed per feature)."""

    def __post_init__(self) -> None:
        if self.batch < 1 or not 0 <= self.overlap <= 1:
            raise ValueError("need --batch >= 1 and --overlap in [0, 1]")


@dataclass(frozen=True)
class SimulateConfig:
    """How the simulated annotators answer."""

    noise: float = 0.05
    """Share of wrong answers."""
    seed: int = 0
    """Seeds the noise and the reported confidences."""
    expert: Expert = READER
    """Where simulated answers come from: the reader (reads the top windows, like a person) or
    the corpus-tag oracle (the concept tags of the texts a feature fires in)."""

    def __post_init__(self) -> None:
        if not 0 <= self.noise <= 1:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if self.expert not in EXPERTS:
            raise ValueError(f"expert must be one of {', '.join(EXPERTS)}, got {self.expert!r}")
