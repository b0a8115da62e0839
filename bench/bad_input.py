"""Bad-input rerun (#31): every case a sceptical new user tries, as a real `safesail` process.

Each case runs `python -m safesail.cli.main ...` against a fresh tiny workspace built here
through the CLI itself (a small corpus, a zero-weight SAE of the embedded model's width, one
imported explanation), so the commands meet the files and the database a user's would. Cases
come from issue #31's classes: missing, misplaced, empty, corrupt or locked workspaces and
databases; truncated, mismatched or absent SAE folders; unwritable export paths; malformed,
empty, non-UTF-8, all-bad or oversized imports; bad corpus and taxonomy files; out-of-range
flags. A few valid commands run among them, as a case that wrongly fails must count too.

Per case: exit code, stderr line count, whether a traceback appeared, whether the line gives
a what-to-do (`—`), and whether a refused case changed any table's row count. A case is clean
when valid input exits 0, and bad input exits 2 with exactly one `safesail: error:` line and
changes no row; never a traceback. Cases needing a running Label Studio or LLM endpoint with
a collected workspace are listed as skipped with the reason, outside the total.

Run: ``.venv/bin/python bench/bad_input.py``. Last line: ``bad_input_cases_clean=<clean>/<total>``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sae_folders import zero_sae_folder  # noqa: E402

SAE_ID = "tiny"

SKIPPED = {
    "explain against an endpoint answering 200 with HTML": "needs a collected, triaged "
    "workspace (the model's forward pass); tests/explainer/test_explainer_failures.py covers it",
    "explain against a closed port / 501 / hanging socket": "same; covered by the same file",
    "label push / pull against a stopped Label Studio mid-run": "needs a running Label Studio",
}


@dataclass
class Case:
    name: str
    argv: list[str]
    valid: bool = False
    workspace: Path | None = None
    """Whose row counts must not change (the shared workspace unless the case brings its own)."""
    hold_lock: bool = False


def _counts(workspace: Path) -> dict[str, int]:
    database = workspace / "safesail.db"
    if not database.is_file() or database.stat().st_size == 0:
        return {}
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
            names = [
                r[0] for r in conn.execute("select name from sqlite_master where type='table'")
            ]
            return {n: conn.execute(f'select count(*) from "{n}"').fetchone()[0] for n in names}
    except sqlite3.DatabaseError:
        return {}


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safesail.cli.main", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        timeout=300,
    )


def _build(tmp: Path) -> tuple[Path, dict[str, Path]]:
    """The shared workspace, made by the CLI, and the files the cases feed it."""
    ws = tmp / "ws"
    f: dict[str, Path] = {}
    corpus = tmp / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": t, "concept": c}) + "\n"
            for t, c in [
                ("He threatened to stab the neighbour.", "violence"),
                ("We baked bread together.", "benign"),
            ]
        )
    )
    f["corpus"] = corpus
    f["sae"] = zero_sae_folder(tmp / "sae")
    explanation = {
        "sae_id": SAE_ID,
        "index": 3,
        "explanation": "insults",
        "source": "prior",
        "concepts": ["hate_harassment"],
    }
    (tmp / "one.jsonl").write_text(json.dumps(explanation) + "\n")
    f["one"] = tmp / "one.jsonl"
    for argv in (
        ["corpus", "add", str(corpus)],
        ["sae", "add", "--path", str(f["sae"]), "--id", SAE_ID],
        ["import", "jsonl", str(f["one"])],
        ["export", "--format", "jsonl", "--include-priors", "--out", str(tmp / "export")],
    ):
        done = _run([*argv, "--workspace", str(ws)], tmp)
        if done.returncode != 0:
            raise SystemExit(f"building the workspace failed at {argv}: {done.stderr[-500:]}")
    f["export"] = tmp / "export"
    return ws, f


def _bad_files(tmp: Path, ws: Path, f: dict[str, Path]) -> None:
    """Every bad file a case points at."""
    good_db = (ws / "safesail.db").read_bytes()
    for name, content in {
        "zero": b"",
        "text": b"not a database\n" * 100,
        "truncated": good_db[:4096],
    }.items():
        folder = tmp / f"db-{name}"
        folder.mkdir()
        (folder / "safesail.db").write_bytes(content)
    (tmp / "a-file").write_text("x")
    truncated = zero_sae_folder(tmp / "sae-truncated")
    weights = truncated / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    zero_sae_folder(tmp / "sae-mismatched", cfg_d_sae=32)
    garbage_cfg = zero_sae_folder(tmp / "sae-garbage-cfg")
    (garbage_cfg / "cfg.json").write_bytes(b"\xff\xfe{not json")
    row = {"sae_id": SAE_ID, "index": 5, "explanation": "x", "source": "prior", "concepts": []}
    writes: dict[str, bytes] = {
        "latin1.jsonl": json.dumps(row).replace('"x"', '"caf\u00e9"').encode("latin-1") + b"\n",
        "garbage.parquet": b"PAR1 this is not parquet",
        "empty.parquet": b"",
        "broken.csv": b'sae_id,index,explanation\ntiny,1,\0nul\ntiny,2,"unterminated\n',
        "allbad.jsonl": b'{"sae_id": "tiny", "index": "x", "explanation": 1}\n[1,2]\n',
        "huge.jsonl": (json.dumps({**row, "explanation": "x" * 100_000}) + "\n").encode(),
        "rejected-db.json": json.dumps({"model": "gpt2", "neurons": [{"x": 1}]}).encode(),
        "garbage.delphi": bytes(range(256)),
        "garbage.openai": b"\x00\x01 not jsonl",
        "bad-corpus.json": b"{not json",
        "corpus.txt": b"some text",
        # new rows, so that the locked cases must write (WAL lets a reader past the lock)
        "new-corpus.jsonl": b'{"text": "A text not yet in the corpus.", "concept": "benign"}\n',
        "new-explanation.jsonl": (
            json.dumps({**row, "explanation": "new", "concepts": ["hate_harassment"]}) + "\n"
        ).encode(),
        "no-text.csv": b"body,concept\nhello,benign\n",
        "bad-taxonomy.json": b"[1, 2, 3]",
    }
    for name, content in writes.items():
        (tmp / name).write_bytes(content)


def _cases(tmp: Path, ws: Path, f: dict[str, Path]) -> list[Case]:
    w = ["--workspace", str(ws)]
    file = tmp / "a-file"
    return [
        # workspaces and databases
        Case("status on a mistyped --workspace", ["status", "--workspace", str(tmp / "typo")]),
        Case(
            "export on a mistyped --workspace",
            [
                "export",
                "--format",
                "jsonl",
                "--out",
                str(tmp / "o1"),
                "--workspace",
                str(tmp / "typo2"),
            ],
        ),
        Case("status with --workspace a file", ["status", "--workspace", str(file)]),
        Case(
            "corpus add under a file",
            ["corpus", "add", str(f["corpus"]), "--workspace", str(file / "ws")],
        ),
        Case(
            "corpus add in an uncreatable folder",
            ["corpus", "add", str(f["corpus"]), "--workspace", "/proc/safesail-ws"],
        ),
        Case(
            "status on a 0-byte safesail.db",
            ["status", "--workspace", str(tmp / "db-zero")],
            workspace=tmp / "db-zero",
        ),
        Case(
            "status on a text file as safesail.db",
            ["status", "--workspace", str(tmp / "db-text")],
            workspace=tmp / "db-text",
        ),
        Case(
            "status on a truncated safesail.db",
            ["status", "--workspace", str(tmp / "db-truncated")],
            workspace=tmp / "db-truncated",
        ),
        Case(
            "collect on a truncated safesail.db",
            ["collect", "--workspace", str(tmp / "db-truncated")],
            workspace=tmp / "db-truncated",
        ),
        Case(
            "triage on a truncated safesail.db",
            ["triage", "--workspace", str(tmp / "db-truncated")],
            workspace=tmp / "db-truncated",
        ),
        Case(
            "import on a text file as safesail.db",
            ["import", "jsonl", str(f["one"]), "--workspace", str(tmp / "db-text")],
            workspace=tmp / "db-text",
        ),
        Case(
            "corpus add while another writer holds the lock",
            ["corpus", "add", str(tmp / "new-corpus.jsonl"), *w],
            hold_lock=True,
        ),
        Case(
            "import while another writer holds the lock",
            ["import", "jsonl", str(tmp / "new-explanation.jsonl"), *w],
            hold_lock=True,
        ),
        Case("a malformed --db-url", ["status", "--db-url", "notaurl://x", *w]),
        Case(
            "an unreachable PostgreSQL",
            ["status", "--db-url", "postgresql+psycopg://u:secret@127.0.0.1:9/x", *w],
        ),
        # SAEs
        Case(
            "sae add with truncated weights",
            ["sae", "add", "--path", str(tmp / "sae-truncated"), *w],
        ),
        Case(
            "sae add with cfg.json and weights disagreeing",
            ["sae", "add", "--path", str(tmp / "sae-mismatched"), *w],
        ),
        Case(
            "sae add with a garbage cfg.json",
            ["sae", "add", "--path", str(tmp / "sae-garbage-cfg"), *w],
        ),
        Case("sae add of a missing folder", ["sae", "add", "--path", str(tmp / "nope"), *w]),
        Case("sae add of a file", ["sae", "add", "--path", str(file), *w]),
        Case("sae add --release without --sae-id", ["sae", "add", "--release", "r", *w]),
        Case("sae add with neither --path nor --release", ["sae", "add", *w]),
        Case(
            "sae add with a bad --id", ["sae", "add", "--path", str(f["sae"]), "--id", "../x", *w]
        ),
        Case(
            "sae add with --model an empty folder",
            [
                "sae",
                "add",
                "--path",
                str(f["sae"]),
                "--id",
                "other",
                "--model",
                str(tmp / "db-zero"),
                *w,
            ],
        ),
        Case(
            "sae add again (same folder, same id)",
            ["sae", "add", "--path", str(f["sae"]), "--id", SAE_ID, *w],
            valid=True,
        ),
        Case("sae remove of an unknown id", ["sae", "remove", "nope", *w]),
        Case("sae list", ["sae", "list", *w], valid=True),
        Case("collect --sae unknown", ["collect", "--sae", "nope", *w]),
        Case("collect --top-k -1", ["collect", "--top-k", "-1", *w]),
        Case("collect --ray-workers 0", ["collect", "--ray-workers", "0", *w]),
        Case("select --layer 99", ["select", "--layer", "99", *w]),
        Case("triage with no SAE selected", ["triage", *w]),
        Case("triage --min-precision 2", ["triage", "--min-precision", "2", *w]),
        Case("explain --feature 999999 (no selection)", ["explain", "--feature", "999999", *w]),
        Case("learn with no SAE selected", ["learn", *w]),
        Case("label push without Label Studio", ["label", "push", *w]),
        # exports
        Case("export --out a file", ["export", "--format", "jsonl", "--out", str(file), *w]),
        Case(
            "export --out under a file",
            ["export", "--format", "jsonl", "--out", str(file / "under"), *w],
        ),
        Case(
            "export --out somewhere unwritable",
            ["export", "--format", "jsonl", "--out", "/proc/safesail-export", *w],
        ),
        Case(
            "export --format bogus", ["export", "--format", "bogus", "--out", str(tmp / "o2"), *w]
        ),
        Case(
            "export jsonl",
            ["export", "--format", "jsonl", "--out", str(tmp / "o3"), *w],
            valid=True,
        ),
        # imports
        Case("import jsonl with latin-1 bytes", ["import", "jsonl", str(tmp / "latin1.jsonl"), *w]),
        Case("import a malformed parquet", ["import", "parquet", str(tmp / "garbage.parquet"), *w]),
        Case("import an empty parquet", ["import", "parquet", str(tmp / "empty.parquet"), *w]),
        Case(
            "import csv with NUL and an unterminated quote",
            ["import", "csv", str(tmp / "broken.csv"), *w],
        ),
        Case(
            "import jsonl whose every row is bad",
            ["import", "jsonl", str(tmp / "allbad.jsonl"), *w],
        ),
        Case("import a 100 kB explanation", ["import", "jsonl", str(tmp / "huge.jsonl"), *w]),
        Case(
            "import a Safe-SAIL DB whose every row is rejected",
            ["import", "safesail-db", str(tmp / "rejected-db.json"), *w],
        ),
        Case("import delphi garbage", ["import", "delphi", str(tmp / "garbage.delphi"), *w]),
        Case("import openai garbage", ["import", "openai", str(tmp / "garbage.openai"), *w]),
        Case(
            "import neuronpedia from a missing folder",
            ["import", "neuronpedia", str(tmp / "nope"), *w],
        ),
        Case("import of a missing file", ["import", "jsonl", str(tmp / "nope.jsonl"), *w]),
        Case(
            "re-import of the workspace's own export",
            ["import", "jsonl", str(f["export"]), *w],
            valid=True,
        ),
        # corpus and taxonomy
        Case("corpus add of a missing file", ["corpus", "add", str(tmp / "nope.jsonl"), *w]),
        Case("corpus add of a .txt", ["corpus", "add", str(tmp / "corpus.txt"), *w]),
        Case("corpus add of invalid JSON", ["corpus", "add", str(tmp / "bad-corpus.json"), *w]),
        Case(
            "corpus add of a CSV with no text column",
            ["corpus", "add", str(tmp / "no-text.csv"), *w],
        ),
        Case(
            "corpus build --taxonomy missing",
            ["corpus", "build", "--taxonomy", str(tmp / "nope.json"), *w],
        ),
        Case(
            "corpus build --taxonomy not an object",
            ["corpus", "build", "--taxonomy", str(tmp / "bad-taxonomy.json"), *w],
        ),
        Case(
            "corpus add (again: nothing new)", ["corpus", "add", str(f["corpus"]), *w], valid=True
        ),
        # flags
        Case("status --device nonsense", ["status", "--device", "tpu9", *w]),
        Case("status --json", ["status", "--json", *w], valid=True),
    ]


def _judge(case: Case, done: subprocess.CompletedProcess[str], changed: bool) -> tuple[bool, str]:
    lines = done.stderr.strip().splitlines()
    traceback = "Traceback" in done.stderr
    fix = "—" in (lines[-1] if lines else "")
    if case.valid:
        clean = done.returncode == 0 and not traceback
    else:
        one = len(lines) == 1 and lines[0].startswith("safesail: error: ")
        clean = done.returncode == 2 and one and not traceback and not changed
    detail = (
        f"exit={done.returncode} stderr_lines={len(lines)} traceback={'yes' if traceback else 'no'}"
        f" fix={'yes' if fix else 'no'} rows_changed={'yes' if changed else 'no'}"
    )
    return clean, detail


def _holding_lock(database: Path) -> Callable[[], None]:
    holder = sqlite3.connect(database, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        holder.rollback()
        holder.close()

    return release


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-bad-input-") as name:
        tmp = Path(name)
        ws, files = _build(tmp)
        _bad_files(tmp, ws, files)
        cases = _cases(tmp, ws, files)
        clean_total = 0
        for n, case in enumerate(cases, 1):
            watched = case.workspace or ws
            before = _counts(watched)
            release = _holding_lock(ws / "safesail.db") if case.hold_lock else None
            try:
                done = _run(case.argv, tmp)
            finally:
                if release:
                    release()
            changed = not case.valid and _counts(watched) != before
            clean, detail = _judge(case, done, changed)
            clean_total += clean
            last = (done.stderr.strip().splitlines() or [""])[-1][:160]
            print(f"{n:>2} {'clean' if clean else 'NOT CLEAN'}  {case.name}: {detail}")
            if not clean or not case.valid:
                print(f"     {last}")
        for what, why in SKIPPED.items():
            print(f"skipped: {what}: {why}")
        print(f"bad_input_cases_clean={clean_total}/{len(cases)}")


if __name__ == "__main__":
    main()
