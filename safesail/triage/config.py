"""The settings of feature triage, validated when they are made.

Kept apart from the computations (``safesail.triage.text``, ``safesail.triage.tokens``) so that
the command line and the workspace can build and check a configuration without importing the
statistics; "contrast" and the validators are selection's (``safesail.selection.config``), so
that scoring and triage read one definition of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from safesail.selection.config import Contrast, require_contrast, require_fraction, require_int


@dataclass(frozen=True)
class TriageConfig:
    """When a feature counts as a safety candidate for a concept."""

    min_precision: float = 0.3
    """Of the texts the feature fires on, at least this share must carry the concept (tested
    on the 95% Wilson lower bound, so a feature firing on a handful of texts cannot pass by
    luck)."""
    min_support: int = 5
    """... and it must fire on at least this many of the concept's texts."""
    fire_fraction: float = 0.5
    """A text counts as fired on above this fraction of the feature's max activation (Safe-SAIL
    normalises each neuron by its own scale); a candidate is judged by where it fires strongly."""
    alpha: float = 0.05
    """Family-wise error rate of "fires on the concept more often than its base rate", a
    one-sided binomial test Bonferroni-corrected over features x concepts: among thousands
    of features some would look precise by luck."""
    contrast: Contrast = "rest"
    """Contrast texts: every text without the concept ("rest") or benign texts ("benign")."""
    max_density: float = 7.0
    """A feature firing on the tokens of its contrast texts (the texts without its concept)
    at more than this multiple of the SAE's mean feature firing rate (L0 / d_sae: 0.7% for
    the demo's, so about 5%) is rejected: it fires on whatever text it is in, and its peaks
    in concept texts say where those texts are, not what they mean. Relative, because what
    is dense depends on the SAE's sparsity; counted outside the concept, so that a feature
    firing on every token of violence texts and on nothing else stays a violence feature."""
    max_non_content: float = 0.5
    """A feature whose top contexts peak on a function word, punctuation, a digit or a format
    token in more than this share of them is rejected: those tokens occur in every kind of
    text, so the concept lies in the texts around the peak, not in what the feature reads."""
    min_term_share: float = 0.25
    """At least this share of a feature's top contexts must peak on a safety concept's term,
    else it is rejected: a taxonomy keyword or term (``Concept.terms``) that holds the peak
    word, or a neighbour marked as strongly (" terrorist", "sexual intercourse", " DAN").
    Content words that merely co-occur with a concept in this corpus (" ChatGPT" in
    jailbreak prompts, "alma mater" in questions about senators) are what the texts are
    about, not what the feature means. Applied when the candidate's concept has keywords or
    terms; the terms found may be any safety concept's."""
    term_path_share: float = 0.5
    """A feature that fails the text-level gates is still a candidate when more than this
    share of its top contexts (and at least ``TERM_PATH_MIN_CONTEXTS``) peak on one safety
    concept's term and it passes the token rules for that concept: a reader labels a feature
    by its marked tokens ("TER" of " CHARACTER" in persona set-ups, " terrorist" in every
    context), even when it fires in too few texts, or in too many dictionary glosses, for the
    text-level gates. 1 turns this path off."""

    def __post_init__(self) -> None:
        require_fraction("min_precision", self.min_precision, 0.0, 1.0)
        require_int("min_support", self.min_support, 1)
        require_fraction("alpha", self.alpha, 0.0, 1.0)
        require_fraction("fire_fraction", self.fire_fraction, 0.0, 1.0)
        require_contrast(self.contrast)
        if isinstance(self.max_density, bool) or not isinstance(self.max_density, int | float):
            raise ValueError(f"max_density must be a number, got {self.max_density!r}")
        if self.max_density <= 0:
            raise ValueError(f"max_density must be > 0, got {self.max_density}")
        require_fraction("max_non_content", self.max_non_content, 0.0, 1.0)
        require_fraction("min_term_share", self.min_term_share, 0.0, 1.0)
        require_fraction("term_path_share", self.term_path_share, 0.0, 1.0)
