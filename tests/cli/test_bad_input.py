"""Bad input gets one line on stderr and exit 2, never a traceback, and changes nothing.

Runs the CLI in-process (`safesail.cli.main.main`) on a workspace made without the model (a
registered SAE row is enough for the importers), so the whole file takes seconds.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, func, select

from safesail.cli.main import main
from safesail.config import WorkspaceConfig
from safesail.db.tables import Explanation, SaeRecord, session_scope
from tests.sae_folders import zero_sae_folder

SAE_ID = "L1-w64-k4-tiny"
FORMATS = ("jsonl", "parquet", "csv", "neuronpedia", "delphi", "openai", "safesail-db")


def _workspace(path: Path) -> Path:
    """A workspace with one SAE row and one explanation, made without loading the model."""
    from safesail.workspace import Workspace

    ws = Workspace(WorkspaceConfig(path))
    with session_scope(ws.engine) as session:
        session.add(
            SaeRecord(
                id=SAE_ID,
                source="disk",
                path="",
                layer=1,
                d_in=576,
                d_sae=64,
                architecture="topk",
                selected=True,
            )
        )
        session.flush()
        session.add(
            Explanation(
                sae_id=SAE_ID,
                feature=3,
                source="human",
                status="accepted",
                concepts=["hate_harassment"],
                text="insults",
            )
        )
    ws.engine.dispose()
    return path


def _counts(path: Path) -> dict[str, int]:
    """Rows per table, read straight from the file (a test must see what a user would)."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{path / 'safesail.db'}")
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        counts = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in tables.sorted_tables
        }
    engine.dispose()
    return counts


def _fails_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("safesail: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return _workspace(tmp_path / "ws")


def test_reading_command_refuses_a_missing_workspace(tmp_path, capsys):
    missing = tmp_path / "typo"
    line = _fails_in_one_line(["status", "--workspace", str(missing)], capsys)
    assert "no workspace at" in line and "—" in line
    assert not missing.exists()


def test_zero_byte_database_is_an_error_not_a_new_workspace(tmp_path, capsys):
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "safesail.db").touch()
    for argv in (["status"], ["corpus", "show"], ["corpus", "add", str(tmp_path / "x.jsonl")]):
        line = _fails_in_one_line([*argv, "--workspace", str(folder)], capsys)
        assert "0 bytes" in line
    assert (folder / "safesail.db").stat().st_size == 0


def test_workspace_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    line = _fails_in_one_line(["status", "--workspace", str(tmp_path / "f")], capsys)
    assert "is a file" in line


def test_text_file_as_database(tmp_path, capsys):
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "safesail.db").write_text("not a database\n" * 100)
    line = _fails_in_one_line(["status", "--workspace", str(folder)], capsys)
    assert "safesail.db" in line and "unreadable" in line


def test_locked_database_names_the_file_and_never_the_parameters(ws, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    secret = "a very particular corpus sentence"
    corpus.write_text(json.dumps({"text": secret, "concept": "benign"}) + "\n")
    holder = sqlite3.connect(ws / "safesail.db", timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        line = _fails_in_one_line(["corpus", "add", str(corpus), "--workspace", str(ws)], capsys)
    finally:
        holder.rollback()
        holder.close()
    assert "locked" in line and "another safesail process holds it" in line
    assert str(ws / "safesail.db") in line and secret not in line


def test_debug_shows_the_traceback(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "safesail.db").write_text("not a database\n" * 100)
    with pytest.raises(Exception, match="not a database"):
        main(["status", "--debug", "--workspace", str(folder)])


def test_export_to_a_path_under_a_file(ws, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "under"):
        argv = ["export", "--format", "jsonl", "--out", str(out), "--workspace", str(ws)]
        line = _fails_in_one_line([*argv, "--include-priors", "--include-unaccepted"], capsys)
        assert str(blocker) in line


def test_sae_add_refuses_truncated_or_mismatched_weights(ws, tmp_path, capsys):
    """Refused before the model loads and before anything is registered."""
    truncated = zero_sae_folder(tmp_path / "truncated")
    weights = truncated / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    line = _fails_in_one_line(
        ["sae", "add", "--path", str(truncated), "--workspace", str(ws)], capsys
    )
    assert "cannot be read" in line
    mismatched = zero_sae_folder(tmp_path / "mismatched")
    cfg = json.loads((mismatched / "cfg.json").read_text())
    (mismatched / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 32}))
    line = _fails_in_one_line(
        ["sae", "add", "--path", str(mismatched), "--workspace", str(ws)], capsys
    )
    assert "shape" in line
    line = _fails_in_one_line(
        ["sae", "add", "--path", str(tmp_path / "nope"), "--workspace", str(ws)], capsys
    )
    assert "not an SAE" in line
    assert _counts(ws)["saerecord"] == 1


def test_sae_remove(ws, capsys):
    line = _fails_in_one_line(["sae", "remove", SAE_ID, "--workspace", str(ws)], capsys)
    assert "selected" in line and "--force" in line
    assert _counts(ws)["saerecord"] == 1
    assert main(["sae", "remove", SAE_ID, "--force", "--workspace", str(ws)]) == 0
    assert "1 explanation" in capsys.readouterr().out
    counts = _counts(ws)
    assert counts["saerecord"] == 0 and counts["explanation"] == 0
    line = _fails_in_one_line(["sae", "remove", SAE_ID, "--workspace", str(ws)], capsys)
    assert "no SAE" in line


def test_import_of_only_bad_rows_exits_2_and_names_each_reason(ws, tmp_path, capsys):
    csv_file = tmp_path / "explanations.csv"
    csv_file.write_text(
        "sae_id,index,explanation\n"
        f"{SAE_ID},notanumber,x\n"
        f"{SAE_ID},1,\0nul\n"
        f'{SAE_ID},2,"unterminated\n'
    )
    before = _counts(ws)
    code = main(["import", "csv", str(csv_file), "--workspace", str(ws)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "unparsable CSV" in out and "bad row" in out
    assert _counts(ws) == before


def test_reimported_export_adds_nothing(ws, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--format", "jsonl", "--out", str(out), "--workspace", str(ws)]) == 0
    before = _counts(ws)
    assert main(["import", "jsonl", str(out), "--workspace", str(ws)]) == 0
    assert "1 already present" in capsys.readouterr().out
    assert _counts(ws) == before


def test_oversized_explanation_is_skipped(ws, tmp_path, capsys):
    row = {"sae_id": SAE_ID, "index": 5, "explanation": "x" * 100_000, "source": "prior"}
    (tmp_path / "e.jsonl").write_text(json.dumps(row) + "\n")
    before = _counts(ws)
    _fails_in_one_line(
        ["import", "jsonl", str(tmp_path / "e.jsonl"), "--workspace", str(ws)], capsys
    )
    assert _counts(ws) == before


def _garbage(rng: random.Random, good: bytes) -> bytes:
    """One bad file: a valid one truncated, random bytes, another encoding, wrong JSON types,
    a huge field, or nothing."""
    kind = rng.randrange(7)
    if kind == 0:
        return good[: rng.randrange(1, max(2, len(good) - 1))]  # never only the newline
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    if kind == 2:
        return good.decode("utf-8").encode("utf-16")
    if kind == 3:
        value = rng.choice([None, 1.5, [], {}, "x", -1, 10**30, True])
        return (json.dumps({"sae_id": value, "index": value, "explanation": value}) + "\n").encode()
    if kind == 4:
        return good.replace(b"insults", b"x" * 300_000)
    if kind == 5:
        return b""
    return b"\xff\xfe" + good[::-1]


@pytest.mark.parametrize("seed", range(3))
def test_property_garbage_into_every_importer_and_sae_add(seed, tmp_path, capsys):
    """Seeded random garbage (hypothesis is not in the lock): every importer and `sae add`
    answer exit 2 with one line on stderr, and no table changes."""
    rng = random.Random(seed)
    ws = _workspace(tmp_path / "ws")
    export = tmp_path / "export"
    assert main(["export", "--format", "jsonl", "--out", str(export), "--workspace", str(ws)]) == 0
    good = (export / "explanations.jsonl").read_bytes()
    capsys.readouterr()
    before = _counts(ws)
    for n, fmt in enumerate(FORMATS * 2):
        bad = tmp_path / f"bad-{n}.{fmt}"
        bad.write_bytes(_garbage(rng, good))
        code = main(["import", fmt, str(bad), "--workspace", str(ws)])
        err = capsys.readouterr().err
        assert code == 2, (fmt, bad.read_bytes()[:200], err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (fmt, err)
        assert _counts(ws) == before, fmt
    for n in range(4):
        folder = zero_sae_folder(tmp_path / f"sae-{n}")
        target = folder / rng.choice(["cfg.json", "sae_weights.safetensors"])
        target.write_bytes(_garbage(rng, target.read_bytes()) if n % 2 else b"\0" * 64)
        _fails_in_one_line(["sae", "add", "--path", str(folder), "--workspace", str(ws)], capsys)
        assert _counts(ws) == before


def test_stale_export_staging_is_removed_at_the_next_run(ws, tmp_path):
    out = tmp_path / "export"
    killed = out / ".jsonl-killed"  # what a kill -9 during an export leaves
    killed.mkdir(parents=True)
    (killed / "explanations.jsonl").write_text("partial")
    (killed / ".owner-pid").write_text("999999999 1")
    running = out / ".jsonl-running"  # another export still writing
    running.mkdir()
    (running / ".owner-pid").write_text(str(os.getpid()))
    assert main(["export", "--format", "jsonl", "--out", str(out), "--workspace", str(ws)]) == 0
    assert not killed.exists() and running.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        ".jsonl-running",
        "explanations.jsonl",
        "jsonl.manifest.json",
    ]  # the owner file stays in the staging folder


def test_a_moved_workspace_reads_its_own_sae_folders(tmp_path):
    import shutil

    from sqlmodel import Session

    from safesail.workspace import Workspace

    original = _workspace(tmp_path / "ws")
    own = zero_sae_folder(original / "saes" / "mine")
    elsewhere = zero_sae_folder(tmp_path / "shared" / "theirs")
    ws = Workspace(WorkspaceConfig(original))
    with session_scope(ws.engine) as session:
        session.get(SaeRecord, SAE_ID).path = str(own)
        session.add(
            SaeRecord(
                id="other",
                source="disk",
                path=str(elsewhere),
                layer=1,
                d_in=576,
                d_sae=64,
                architecture="topk",
            )
        )
    ws.engine.dispose()
    moved = tmp_path / "moved"
    shutil.move(original, moved)
    ws = Workspace(WorkspaceConfig(moved))
    with Session(ws.engine) as session:
        assert session.get(SaeRecord, SAE_ID).path == str((moved / "saes" / "mine").resolve())
        assert session.get(SaeRecord, "other").path == str(elsewhere)
    ws.engine.dispose()


def test_sae_add_relative_paths_follow_a_copied_workspace(tmp_path, monkeypatch, capsys):
    """`sae add --path` relative to where the user stands: an SAE inside the workspace is the
    workspace's own, so a copy whose database is opened before its `saes/` arrives (a `cp`
    in two steps, an rsync) still reads its own folder, never the original's; one outside
    stays where it is."""
    import shutil

    from sqlmodel import Session

    from safesail.workspace import Workspace

    original = _workspace(tmp_path / "ws")
    zero_sae_folder(original / "saes" / "mine")
    zero_sae_folder(tmp_path / "shared" / "theirs")
    monkeypatch.chdir(original)
    for path, record_id in (("saes/mine", "mine"), ("../shared/theirs", "theirs")):
        assert main(["sae", "add", "--path", path, "--id", record_id, "--workspace", "."]) == 0
    capsys.readouterr()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns("saes"))  # the database first
    assert main(["status", "--workspace", str(copy)]) == 0
    shutil.copytree(original / "saes", copy / "saes")
    for folder, own in ((original, original), (copy, copy)):
        ws = Workspace(WorkspaceConfig(folder))
        with Session(ws.engine) as session:
            assert session.get(SaeRecord, "mine").path == str((own / "saes" / "mine").resolve())
            theirs = session.get(SaeRecord, "theirs").path
            assert theirs == str((tmp_path / "shared" / "theirs").resolve())
        ws.engine.dispose()


@pytest.mark.parametrize("inside", [True, False], ids=["inside", "outside"])
def test_a_copied_workspace_reads_its_own_taxonomy(tmp_path, inside, capsys):
    """A custom taxonomy inside the workspace is the workspace's own: a copy opened after the
    original is gone reads the copy's file (the original's path would be "not found"); one
    outside the workspace stays where it is."""
    import shutil

    from sqlmodel import Session

    from safesail.db.paths import TAXONOMY_PATH
    from safesail.db.tables import get_meta
    from safesail.workspace import Workspace

    original = _workspace(tmp_path / "ws")
    folder = original if inside else tmp_path / "shared"
    folder.mkdir(exist_ok=True)
    custom = {
        "benign": {"description": "ordinary text", "safety": False},
        "gardening": {"description": "garden tools", "safety": True, "keywords": ["trowel"]},
    }
    (folder / "taxonomy.json").write_text(json.dumps({"concepts": custom}))
    ws = Workspace(WorkspaceConfig(original))
    ws.use_taxonomy(folder / "taxonomy.json")
    ws.engine.dispose()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.move(original, tmp_path / "gone")
    assert main(["status", "--workspace", str(copy)]) == 0, capsys.readouterr().err
    ws = Workspace(WorkspaceConfig(copy))
    assert list(ws.taxonomy.concepts) == ["benign", "gardening"]
    with Session(ws.engine) as session:
        expected = (copy if inside else folder) / "taxonomy.json"
        assert get_meta(session, TAXONOMY_PATH) == str(expected.resolve())
    ws.engine.dispose()


def test_model_folder_without_a_model_is_one_line(ws, tmp_path, capsys):
    """transformers explains a folder without a tokenizer over five lines: still one line here,
    and the SAE (whose files are fine) is not registered."""
    empty = tmp_path / "model"
    empty.mkdir()
    sae = zero_sae_folder(tmp_path / "sae")
    argv = ["sae", "add", "--path", str(sae), "--model", str(empty), "--workspace", str(ws)]
    line = _fails_in_one_line(argv, capsys)
    assert f"cannot load model from folder {empty}" in line and "save_pretrained" in line
    assert _counts(ws)["saerecord"] == 1


def test_a_refused_flag_is_one_line_naming_the_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["export", "--format", "bogus"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("safesail: error: argument --format: invalid choice: 'bogus'")
    assert err.rstrip().endswith("— see `safesail export --help`")


def test_collect_of_an_unknown_sae_changes_nothing(ws, capsys):
    """Checked before the contexts and the chunk plan are written; the model it loads first
    prints no progress bar before the line."""
    (corpus := ws / "c.jsonl").write_text(json.dumps({"text": "a b c", "concept": "benign"}))
    assert main(["corpus", "add", str(corpus), "--workspace", str(ws)]) == 0
    capsys.readouterr()
    before = _counts(ws)
    line = _fails_in_one_line(["collect", "--sae", "nope", "--workspace", str(ws)], capsys)
    assert "unknown SAE id(s): nope" in line
    assert _counts(ws) == before
