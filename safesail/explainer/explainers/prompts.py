"""Explainer prompts: marked, segment-level contexts with nearest-gold few-shot and a line of
corpus evidence (ours), and a delphi-style baseline (every top context whole, no few-shot, no
evidence) to measure what that saves.

Safe-SAIL cut interpretation cost by showing only the window around activations; the marked
tokens <<like this>> carry the signal, the rest of a long context mostly costs tokens. The
evidence line gives the explainer what an expert also looks at, the corpus concept tags of the
texts behind the top contexts against their base rates, so a small model's concept choice is
grounded in statistics rather than copied from its worked examples.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ValidationInfo, field_validator, model_validator

from safesail.explainer.explainers.marks import Shown, names_what_fires, render, segment
from safesail.taxonomy import BENIGN, UNINTERPRETABLE, normalize_name

if TYPE_CHECKING:
    from safesail.explainer.config import ExplainConfig


MIN_EVIDENCE_TEXTS = 3
"""Fewer texts than this point to no concept (one or two texts are anecdotes)."""


class Evidence(NamedTuple):
    """Corpus concept tags of the texts behind a feature's explain-split top contexts."""

    n_texts: int
    shares: dict[str, float]
    """Share of those texts carrying each tag (tags that occur only)."""
    base: dict[str, float]
    """Share of all corpus texts carrying each tag."""

    def ranked(self) -> list[tuple[str, float]]:
        """Tags by share, ties by the larger lift over the base rate, then by name."""
        return sorted(
            self.shares.items(),
            key=lambda kv: (-kv[1], -kv[1] / max(self.base.get(kv[0], 0.0), 1e-9), kv[0]),
        )

    def leading(self) -> str | None:
        """The tag the statistics point to: the most frequent one at least twice as common as
        in the corpus, else the most frequent one (None below MIN_EVIDENCE_TEXTS texts)."""
        if self.n_texts < MIN_EVIDENCE_TEXTS:
            return None
        ranked = self.ranked()
        enriched = [c for c, share in ranked if share >= 2 * self.base.get(c, 1.0)]
        return enriched[0] if enriched else (ranked[0][0] if ranked else None)

    def choices(self, labels: list[str], max_tags: int = 3) -> list[str]:
        """The concepts worth choosing from: the shown tags, benign, uninterpretable (in
        taxonomy order), so a small model picks among what the statistics support."""
        keep = {c for c, _ in self.ranked()[:max_tags]} | {BENIGN, UNINTERPRETABLE}
        return [label for label in labels if label in keep]

    def line(self, max_tags: int = 3) -> str:
        """One compact prompt line, e.g. 'Corpus tags of its 10 top texts: jailbreak 80%
        (base 7%), benign 20% (base 37%)'."""
        if not self.n_texts:
            return "Corpus tags of its top texts: none"
        tags = ", ".join(
            f"{c} {share:.0%} (base {self.base.get(c, 0.0):.0%})"
            for c, share in self.ranked()[:max_tags]
        )
        return f"Corpus tags of its {self.n_texts} top texts: {tags or 'none'}"


def corpus_evidence(
    text_ids: list[int], tags: dict[int, list[str]], base: dict[str, float]
) -> Evidence:
    """Evidence from the texts behind the contexts (each text counted once)."""
    texts = list(dict.fromkeys(text_ids))
    counts: dict[str, int] = {}
    for t in texts:
        for c in set(tags.get(t, [])):
            counts[c] = counts.get(c, 0) + 1
    return Evidence(len(texts), {c: n / len(texts) for c, n in counts.items()}, base)


def base_rates(tags: dict[int, list[str]]) -> dict[str, float]:
    """Share of corpus texts carrying each tag."""
    counts: dict[str, int] = {}
    for labels in tags.values():
        for c in set(labels):
            counts[c] = counts.get(c, 0) + 1
    return {c: n / max(len(tags), 1) for c, n in counts.items()}


class GoldShot(NamedTuple):
    """A gold-labeled feature used as a worked example."""

    feature: int
    vector: np.ndarray
    contexts: list[Shown]
    concepts: list[str]
    text: str
    confidence: float | None
    evidence: Evidence | None = None


CONCEPT_STEMS: dict[str, tuple[str, ...]] = {
    "violence": ("violen", "kill", "murder", "assault", "stab", "tortur"),
    "self_harm": ("self-harm", "self harm", "suicid", "self-injur"),
    "hate_harassment": ("hate", "harass", "slur", "insult", "bully"),
    "weapons": ("weapon", "firearm", "explosive", "bomb", "gun"),
    "cybercrime": ("cybercrim", "hack", "malware", "ransomware", "exploit"),
    "fraud": ("fraud", "scam", "phish", "counterfeit", "forger"),
    "privacy": ("privacy", "personal data", "personal information", "doxx"),
    "sexual_content": ("sexual", "porn", "erotic", "nudity"),
    "politics": ("politic", "election", "politician"),
    "terror": ("terror", "extremis"),
    "misinformation": ("misinform", "disinform", "conspirac", "fake news", "propaganda"),
    "jailbreak": ("jailbreak",),
}
"""Words a sentence uses when it names a concept (word starts), for the consistency check;
a concept missing here (an edited taxonomy) is named by the parts of its name."""

NO_CONCEPT_PHRASES = (
    "not safety",
    "no safety",
    "ordinary text",
    "everyday text",
    "no coherent",
    "no clear pattern",
    "not interpretable",
    "uninterpretable",
)
"""Phrases that say a feature is no safety concept: they contradict a safety concept."""


def _stems(concept: str) -> tuple[str, ...]:
    return CONCEPT_STEMS.get(concept) or tuple(p for p in concept.split("_") if len(p) > 3)


def named_concepts(sentence: str, concepts: list[str]) -> list[str]:
    """The concepts among `concepts` that the sentence names (a stem at a word start)."""
    lower = sentence.lower()
    return [
        c for c in concepts if any(re.search(rf"\b{re.escape(stem)}", lower) for stem in _stems(c))
    ]


def contradiction(concepts: list[str], sentence: str, safety: list[str]) -> str | None:
    """Why the concepts and the sentence disagree, or None: a "not safety-related" or "not
    interpretable" answer whose sentence names a safety concept, or a safety answer whose
    sentence says it is no concept or names only other concepts."""
    named = named_concepts(sentence, safety)
    chosen = [c for c in concepts if c in safety]
    lower = sentence.lower()
    if not chosen:
        if named:
            return f"concepts {concepts} but the sentence names {named[0]}"
        return None
    if any(phrase in lower for phrase in NO_CONCEPT_PHRASES):
        return f"concepts {chosen} but the sentence says it is no safety concept"
    if named and not set(named) & set(chosen):
        return f"concepts {chosen} but the sentence names {named[0]}"
    return None


class ExplanationAnswer(BaseModel):
    """The explainer's structured answer; concepts must be taxonomy label values, and the
    answer must mean one thing: the sentence may not contradict the concepts, and (when the
    validation context gives the fired tokens) it names what fires, not only a topic."""

    concepts: list[str]
    explanation: str
    confidence: int

    @field_validator("concepts")
    @classmethod
    def _known(cls, value: list[str], info: ValidationInfo) -> list[str]:
        labels = (info.context or {}).get("labels")
        out = []
        for name in value:
            canonical = normalize_name(str(name))
            if labels is not None and canonical not in labels:
                raise ValueError(f"'{name}' is not a taxonomy label")
            if canonical not in out:
                out.append(canonical)
        if not out:
            raise ValueError("no concept given")
        return out[:2]

    @field_validator("explanation")
    @classmethod
    def _sentence(cls, value: str) -> str:
        text = " ".join(value.split())
        first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]  # one sentence
        text = first if len(first) >= 3 else text
        if len(text) < 3:
            raise ValueError("empty explanation")
        return text[:300]

    @field_validator("confidence")
    @classmethod
    def _scale(cls, value: int) -> int:
        if not 0 <= value <= 10:
            raise ValueError("confidence must be 0-10")
        return value

    @model_validator(mode="after")
    def _one_meaning(self, info: ValidationInfo) -> ExplanationAnswer:
        context = info.context or {}
        safety = sorted(context.get("safety") or CONCEPT_STEMS)
        if (why := contradiction(self.concepts, self.explanation, safety)) is not None:
            raise ValueError(why)
        fired = context.get("fired")
        if fired and not names_what_fires(self.explanation, fired):
            raise ValueError(
                "the sentence does not name a token the feature fires on "
                f"(e.g. {', '.join(sorted(fired)[:3])})"
            )
        return self


def explanation_schema(labels: list[str]) -> dict[str, Any]:
    """JSON schema the endpoint constrains its answer to (enums keep concepts on-taxonomy)."""
    return {
        "type": "object",
        "properties": {
            "concepts": {
                "type": "array",
                "items": {"type": "string", "enum": labels},
                "minItems": 1,
                "maxItems": 2,
            },
            "confidence": {"type": "integer", "enum": list(range(11))},
            "explanation": {"type": "string", "maxLength": 140},
        },
        "required": ["concepts", "confidence", "explanation"],
    }


def _system(labels: list[str], evidence: bool = False) -> str:
    hint = (
        " A last line gives the corpus tags of those texts, each with its share and its base "
        "rate in the corpus: a tag far above its base rate usually names the concept."
        if evidence
        else ""
    )
    return (
        "You explain a feature of a language model from texts where it fires; the tokens "
        f"where it fires most are marked <<like this>>.{hint} Reply in JSON with concepts (1-2 "
        f"of: {', '.join(labels)}), confidence (0-10) and explanation (one short sentence that "
        "quotes the marked tokens and names the concept of the text they are in, e.g. Fires "
        'on "stab", "knife" in descriptions of violent attacks.).'
    )


def concept_choices(
    labels: list[str], config: ExplainConfig, evidence: Evidence | None
) -> list[str]:
    """Concepts the answer may name: ours with evidence, the evidence's shortlist; else all."""
    if config.prompting == "ours" and config.evidence and evidence is not None:
        return evidence.choices(labels)
    return labels


def _user(texts: list[str], evidence: Evidence | None, labels: list[str]) -> str:
    body = "Texts:\n" + _numbered(texts)
    if evidence is None:
        return body
    return f"{body}\n{evidence.line()}\nChoose from: {', '.join(evidence.choices(labels))}"


def _numbered(texts: list[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))


def explain_messages(
    contexts: list[Shown],
    labels: list[str],
    config: ExplainConfig,
    shots: list[GoldShot] = (),
    evidence: Evidence | None = None,
) -> list[dict[str, str]]:
    """The chat for one feature. `contexts` are its explain-split top contexts, best first;
    `evidence` (ours, when config.evidence) their corpus tags."""
    if config.prompting == "baseline":
        texts = [render(c, config.mark_fraction) for c in contexts]
        return [
            {"role": "system", "content": _system(labels)},
            {"role": "user", "content": "Texts:\n" + _numbered(texts)},
        ]
    show = config.evidence and evidence is not None
    messages = [{"role": "system", "content": _system(labels, show)}]
    for shot in shots:
        texts = [render(segment(*c, config), config.mark_fraction) for c in shot.contexts[:2]]
        answer = {
            "concepts": shot.concepts,
            "confidence": int(round(10 * shot.confidence)) if shot.confidence is not None else 8,
            "explanation": shot.text or f"Text about {', '.join(shot.concepts)}.",
        }
        shot_evidence = shot.evidence if show else None
        messages.append({"role": "user", "content": _user(texts, shot_evidence, labels)})
        messages.append({"role": "assistant", "content": json.dumps(answer)})
    texts = [render(segment(*c, config), config.mark_fraction) for c in contexts[: config.n_shown]]
    messages.append({"role": "user", "content": _user(texts, evidence if show else None, labels)})
    return messages


def nearest_shots(vector: np.ndarray, gold: list[GoldShot], k: int, exclude: int) -> list[GoldShot]:
    """The k gold features whose concept profile is closest (cosine), never the feature itself."""
    pool = [g for g in gold if g.feature != exclude]
    if not pool or k == 0:
        return []
    matrix = np.stack([g.vector for g in pool])
    sims = matrix @ vector / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector) + 1e-9)
    order = sorted(range(len(pool)), key=lambda i: (-sims[i], pool[i].feature))
    return [pool[i] for i in order[:k]]
