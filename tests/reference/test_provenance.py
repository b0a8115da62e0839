"""Provenance of the reader's exemplars and the taxonomy's terms (issue 28, item 5).

The reader compares a feature's tokens with exemplars, and triage reads the taxonomy's terms. If
a word got there because a *test-half* reference feature fires on it, the test half measures the
reader and triage on words they were handed, and their figures flatter. So every entry carries
where it came from: a dev-half feature of a reference set whose readers quote it, or the
concept's description (the benign topic's name for everyday words). These tests hold each entry
to that record:

- a cited feature exists in that set's dev half, and a reader's reason for it quotes the entry;
- an entry written from the description, yet quoted by a test-half feature, must be a word of the
  description itself (so the description, not the test half, can have given it).

A reader's reason quotes a token in double quotes (`fires on " hoax" in ...`); an exemplar is
quoted when a quoted piece holds it as a word or an inflection of one ("kill" in " killed"), a
term (a regex) when it matches inside a quoted piece.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from safesail.experts.embed import EXEMPLARS_PATH
from safesail.taxonomy import BENIGN, DEFAULT_TAXONOMY_PATH, Taxonomy

REFERENCE_DIR = Path(__file__).parents[2] / "bench" / "reference"
TERM_PROVENANCE_PATH = DEFAULT_TAXONOMY_PATH.with_name("term_provenance.json")
DESCRIPTION = "description"
_CITATION = re.compile(r"^(?P<set>\S+) dev feature (?P<feature>\d+)$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)+)"')
"""A double-quoted piece; a reason may quote a quote (`"stands for \\"do anything now\\""`)."""
_INFLECTION = "(?:s|es|d|ed|ing|er|ers|ly)"
"""Endings a quoted word may add to an exemplar, after a doubled last letter or not ("kill" is
quoted by " killed", "stab" by "stabbing"); a bare prefix is not enough ("park" is not quoted by
"Parkinson's")."""


@dataclass(frozen=True)
class Entry:
    """One exemplar or term with the concept (or benign topic) it belongs to."""

    text: str
    owner: str
    source: str
    regex: bool
    """Taxonomy terms are regex fragments; exemplars are plain words."""
    description: str
    """What a "description" entry may be written from: the concept's name and description, or
    the benign topic's name."""


@cache
def _readings(set_name: str) -> dict[int, tuple[str, list[str]]]:
    """Per feature of a reference set: its half and every reader's reason (adjudicated features
    keep both readings; any of them may be the one that quotes the word)."""
    path = REFERENCE_DIR / f"{set_name}.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8"))["features"]
    return {
        int(r["feature"]): (
            r["split"],
            [r["reason"], *(reading["reason"] for reading in r.get("readings", []))],
        )
        for r in rows
    }


def _reference_sets() -> list[str]:
    return sorted(p.stem for p in REFERENCE_DIR.glob("*.json"))


def quotes(reason: str, text: str, regex: bool) -> bool:
    """Whether a reader's reason quotes the entry (see the module docstring)."""
    pattern = (
        re.compile(rf"(?<!\w)(?:{text})(?!\w)", re.IGNORECASE)
        if regex
        else re.compile(
            rf"(?<!\w){re.escape(text)}(?:{re.escape(text[-1])}?{_INFLECTION})?(?!\w)",
            re.IGNORECASE,
        )
    )
    return any(pattern.search(piece) for piece in _QUOTED.findall(reason))


def problem(entry: Entry) -> str | None:
    """Why the entry's provenance does not hold, or None when it does."""
    label = f"{entry.owner}: {entry.text!r}"
    if entry.source == DESCRIPTION:
        leaks = [
            f"{name} {feature}"
            for name in _reference_sets()
            for feature, (half, reasons) in _readings(name).items()
            if half == "test" and any(quotes(r, entry.text, entry.regex) for r in reasons)
        ]
        if leaks and not quotes(f'"{entry.description}"', entry.text, entry.regex):
            return f"{label} is said to be written from the description, which lacks it, but test-half features quote it: {leaks}"
        return None
    match = _CITATION.match(entry.source)
    if match is None:
        return f"{label} has provenance {entry.source!r}: expected {DESCRIPTION!r} or '<set> dev feature <n>'"
    feature = int(match["feature"])
    half, reasons = _readings(match["set"]).get(feature, (None, []))
    if half != "dev":
        return f"{label} cites {match['set']} feature {feature}, which is in half {half!r}, not dev"
    if not any(quotes(r, entry.text, entry.regex) for r in reasons):
        return f"{label} cites {match['set']} dev feature {feature}, whose readers do not quote it"
    return None


def _exemplars() -> list[Entry]:
    taxonomy = Taxonomy.load()
    data = json.loads(EXEMPLARS_PATH.read_text(encoding="utf-8"))
    entries = [
        Entry(e["text"], name, e["from"], False, f"{name} {taxonomy.concepts[name].description}")
        for name, listed in data["concepts"].items()
        for e in listed
    ]
    entries += [
        Entry(e["text"], f"{BENIGN}/{topic}", e["from"], False, topic)
        for topic, listed in data["benign"].items()
        for e in listed
    ]
    return entries


def _terms() -> list[Entry]:
    taxonomy = Taxonomy.load()
    recorded = json.loads(TERM_PROVENANCE_PATH.read_text(encoding="utf-8"))["terms"]
    return [
        Entry(term, c.name, recorded.get(c.name, {}).get(term, ""), True, c.description)
        for c in taxonomy.concepts.values()
        for term in c.terms
    ]


def test_the_reference_sets_the_entries_cite_are_there():
    assert {"L8-w1152-k32", "L8-w4608-k32"} <= set(_reference_sets())


def test_every_exemplar_cites_its_description_or_a_dev_feature_that_quotes_it():
    entries = _exemplars()
    assert entries
    assert [p for p in map(problem, entries) if p] == []


def test_every_taxonomy_term_cites_its_description_or_a_dev_feature_that_quotes_it():
    taxonomy = Taxonomy.load()
    recorded = json.loads(TERM_PROVENANCE_PATH.read_text(encoding="utf-8"))["terms"]
    # the record covers exactly the taxonomy's terms: a new term needs its provenance
    assert {(c, t) for c, terms in recorded.items() for t in terms} == {
        (c.name, t) for c in taxonomy.concepts.values() for t in c.terms
    }
    assert [p for p in map(problem, _terms()) if p] == []


def _first(half: str, quoting: str | None = None) -> int:
    """A feature of the v2 set in `half` (whose readers quote `quoting`, when given)."""
    return next(
        f
        for f, (h, reasons) in sorted(_readings("L8-w1152-k32").items())
        if h == half and (quoting is None or any(quotes(r, quoting, False) for r in reasons))
    )


@pytest.mark.parametrize(
    ("text", "source", "fails"),
    [
        ("hoax", f"L8-w1152-k32 dev feature {_first('dev', 'hoax')}", False),
        # the same word cited to a test-half feature that quotes it is refused
        ("gun", f"L8-w1152-k32 dev feature {_first('test', 'gun')}", True),
        # a dev feature whose readers never quote the word is refused
        ("hoax", f"L8-w1152-k32 dev feature {_first('dev', 'OpenAI')}", True),
        ("hoax", "L8-w1152-k32 dev feature 999999", True),
        ("hoax", "a reader said so", True),
        # quoted by a test-half feature only, and not a word of the description: refused
        ("gun", DESCRIPTION, True),
        ("weapon", DESCRIPTION, False),
    ],
)
def test_the_check_refuses_test_half_and_unquoting_citations(text, source, fails):
    description = "weapons Firearms, explosives, and nuclear weapons"
    assert (problem(Entry(text, "weapons", source, False, description)) is not None) is fails
