"""The safety concept taxonomy: names, descriptions, keyword rules and source mappings.

It lives in an editable JSON file (``safesail/data/taxonomy.json``) so that users can add
concepts or tune keywords without touching code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safesail.errors import SafesailError

BENIGN = "benign"
"""Also the label "not safety-related" in annotation."""
UNINTERPRETABLE = "uninterpretable"
"""The label "not interpretable": a feature with no coherent meaning (not a taxonomy concept)."""
DEFAULT_TAXONOMY_PATH = Path(__file__).parent / "data" / "taxonomy.json"

_NAME_OK = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Concept:
    """One concept; ``keywords`` are lowercase regex fragments matched on word boundaries."""

    name: str
    description: str
    safety: bool
    keywords: tuple[str, ...]
    terms: tuple[str, ...] = ()
    """More fragments (same form as keywords) that mean the concept where a feature *peaks*
    on them, but are too ambiguous to label a whole text: " DAN" or " character" in a
    role-play set-up is the jailbreak move, while a text that mentions a Dan or a character
    is not a jailbreak. Triage reads keywords and terms (``keywords_at``); labeling reads
    keywords only."""


def _compile(name: str, fragments: tuple[str, ...]) -> re.Pattern[str]:
    """One alternation of a concept's fragments on word boundaries, compiled once: corpora run
    it on every text. Texts are lowercased before matching, which is cheaper than
    re.IGNORECASE (bench/README.md, "Choices in the code"); fragments with capitals (e.g. \\S) keep the flag so their literals match."""
    alternation = "|".join(f"(?:{kw})" for kw in fragments)
    flags = 0 if alternation == alternation.lower() else re.IGNORECASE
    try:
        return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", flags)
    except re.error as exc:
        raise SafesailError(f"taxonomy concept '{name}' has a bad keyword regex ({exc}) — fix that keyword in the "
            "taxonomy file") from exc


def normalize_name(name: str) -> str:
    """Canonical concept spelling, so "Self-harm" and "self harm" both mean ``self_harm``."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class Taxonomy:
    """Concepts in file order plus the map from dataset labels to concepts."""

    def __init__(
        self,
        concepts: dict[str, Concept],
        sources: dict[str, tuple[str, ...]] | None = None,
        about: str = "",
    ) -> None:
        self.concepts = concepts
        self.sources = dict(sources or {})
        self.about = about
        if BENIGN not in concepts:
            raise SafesailError(f"the taxonomy has no '{BENIGN}' concept — add one with \"safety\": false")
        for key, names in self.sources.items():
            for name in names:
                if name not in concepts:
                    raise SafesailError(f"taxonomy source '{key}' maps to unknown concept '{name}' — add "
                        f"'{name}' to 'concepts' or drop it from that source")
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._term_patterns: dict[str, re.Pattern[str]] = {}
        for concept in concepts.values():
            if not concept.safety:
                continue
            if concept.keywords:
                self._patterns[concept.name] = _compile(concept.name, concept.keywords)
            if concept.keywords or concept.terms:
                words = concept.keywords + concept.terms
                self._term_patterns[concept.name] = _compile(concept.name, words)

    @classmethod
    def load(cls, path: Path | None = None) -> Taxonomy:
        """Read a taxonomy file (None: the packaged default); any defect is a SafesailError."""
        path = Path(path) if path is not None else DEFAULT_TAXONOMY_PATH
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SafesailError(f"taxonomy file not found: {path} — check the path") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SafesailError(f"cannot read taxonomy file {path}: {exc} — save it as UTF-8 JSON") from exc
        except json.JSONDecodeError as exc:
            raise SafesailError(f"taxonomy file {path} is not valid JSON ({exc}) — fix it there") from exc
        return cls.from_json(raw, origin=str(path))

    @classmethod
    def from_json(cls, raw: Any, origin: str = "taxonomy") -> Taxonomy:
        """Build from the parsed JSON object, checking every field a user might get wrong."""
        if not isinstance(raw, dict) or not isinstance(raw.get("concepts"), dict):
            raise SafesailError(f"{origin} has no 'concepts' object — write it as {{\"concepts\": {{name: {{...}}}}}} "
                "(as safesail/data/taxonomy.json)")
        if not raw["concepts"]:
            raise SafesailError(f"{origin}: 'concepts' is empty — add the safety concepts and '{BENIGN}'")
        concepts: dict[str, Concept] = {}
        for name, spec in raw["concepts"].items():
            if not isinstance(name, str) or not _NAME_OK.match(name):
                raise SafesailError(
                    f"{origin}: concept name {name!r} is not a plain name — rename it to lowercase "
                    "letters, digits and '_'"
                )
            if not isinstance(spec, dict):
                raise SafesailError(f"{origin}: concept '{name}' is not an object — give it as "
                    "{\"description\": ..., \"safety\": ...}")
            description = spec.get("description", "")
            safety = spec.get("safety")
            keywords = spec.get("keywords", [])
            if not isinstance(description, str):
                raise SafesailError(f"{origin}: concept '{name}' description is not a string — write it as text")
            if not isinstance(safety, bool):
                raise SafesailError(f"{origin}: concept '{name}' has no boolean 'safety' — set \"safety\": true or false")
            if not isinstance(keywords, list) or not all(
                isinstance(k, str) and k.strip() for k in keywords
            ):
                raise SafesailError(
                    f"{origin}: concept '{name}' keywords are not a list of non-empty strings — "
                    "give them as [\"word\", ...]"
                )
            terms = spec.get("terms", [])
            if not isinstance(terms, list) or not all(
                isinstance(t, str) and t.strip() for t in terms
            ):
                raise SafesailError(
                    f"{origin}: concept '{name}' terms are not a list of non-empty strings — "
                    "give them as [\"word\", ...]"
                )
            concepts[name] = Concept(name, description, safety, tuple(keywords), tuple(terms))
        if BENIGN in concepts and concepts[BENIGN].safety:
            raise SafesailError(f"{origin}: concept '{BENIGN}' is marked as a safety concept — set its \"safety\": false")
        raw_sources = raw.get("sources", {})
        if not isinstance(raw_sources, dict):
            raise SafesailError(f"{origin}: 'sources' is not an object — give it as {{source: [concept, ...]}}")
        sources: dict[str, tuple[str, ...]] = {}
        for key, names in raw_sources.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise SafesailError(f"{origin}: source '{key}' does not map to a list of concepts — give it as "
                    "[concept, ...]")
            sources[key] = tuple(names)
        about = raw.get("about", "")
        return cls(concepts, sources, about if isinstance(about, str) else "")

    def validate(self, name: str) -> str:
        """Return the canonical concept name, or fail listing the known ones."""
        canonical = normalize_name(name) if isinstance(name, str) else ""
        if canonical not in self.concepts:
            known = ", ".join(self.concepts)
            raise SafesailError(f"unknown concept '{name}' — use one of {known}")
        return canonical

    def safety_concepts(self) -> list[str]:
        """Names of all safety concepts, in file order."""
        return [c.name for c in self.concepts.values() if c.safety]

    def label_values(self) -> list[str]:
        """Every value a feature label may take: the concepts, then "not interpretable"."""
        return [*self.concepts, UNINTERPRETABLE]

    def match_keywords(self, text: str) -> list[str]:
        """Safety concepts whose keywords occur in ``text`` (file order)."""
        lowered = text.lower()
        return [name for name, pattern in self._patterns.items() if pattern.search(lowered)]

    def keywords_at(self, text: str, start: int, end: int) -> list[str]:
        """Safety concepts with a keyword or term match in ``text`` that overlaps
        ``text[start:end]`` (file order): whether the words a feature peaks on are themselves
        a concept's term, not merely near one."""
        lowered = text.lower()
        return [
            name
            for name, pattern in self._term_patterns.items()
            if any(m.start() < end and m.end() > start for m in pattern.finditer(lowered))
        ]

    def map_source(self, key: str) -> tuple[str, ...] | None:
        """Concepts for a dataset label; () means "keywords decide", None means "not mapped"."""
        return self.sources.get(key)

    def to_json(self) -> dict[str, Any]:
        """The file form, so an edited taxonomy can be written back."""
        data: dict[str, Any] = {}
        if self.about:
            data["about"] = self.about
        data["concepts"] = {
            c.name: {
                "description": c.description,
                "safety": c.safety,
                "keywords": list(c.keywords),
                **({"terms": list(c.terms)} if c.terms else {}),
            }
            for c in self.concepts.values()
        }
        data["sources"] = {key: list(names) for key, names in self.sources.items()}
        return data
