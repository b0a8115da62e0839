"""Workspace state in a database via sqlmodel (SQLite by default, any SQLAlchemy URL).

Bulky arrays (sparse activations, per-token example activations) are stored as numpy blobs,
one per chunk or per feature, never one row per token.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import JSON, Column, LargeBinary, UniqueConstraint, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Field, Session, SQLModel, create_engine, select

from safesail.errors import SafesailError


def _now() -> datetime:
    return datetime.now(UTC)


class Meta(SQLModel, table=True):
    """Workspace-wide settings (model identity, taxonomy, selected SAE)."""

    key: str = Field(primary_key=True)
    value: Any = Field(sa_column=Column(JSON))


class CorpusText(SQLModel, table=True):
    """One corpus text with provenance and concept labels."""

    id: int = Field(primary_key=True)
    text: str
    source: str = Field(index=True)
    license: str
    concepts: list[str] = Field(sa_column=Column(JSON))


class Context(SQLModel, table=True):
    """A corpus text as the model sees it: the (cut) token sequence shown in examples."""

    text_id: int = Field(primary_key=True, foreign_key="corpustext.id")
    token_ids: list[int] = Field(sa_column=Column(JSON))
    tokens: list[str] = Field(sa_column=Column(JSON))


REFERENCE_ONLY = "reference-only"
"""SaeRecord.source of an SAE known only by its identity (no weights, path ""): the SAE that
imported explanations were written for, e.g. a released Safe-SAIL neuron DB's. Never
collected, selected or triaged; its explanations are browsable and exportable."""


class SaeRecord(SQLModel, table=True):
    """A candidate SAE, where it came from, and how it scored in selection."""

    id: str = Field(primary_key=True)
    source: str  # trained | disk | pretrained | reference-only
    path: str
    layer: int
    d_in: int
    d_sae: int
    k: int | None = None
    architecture: str
    release: str | None = None
    collected: bool = False
    selection_score: float | None = None
    selection: dict | None = Field(default=None, sa_column=Column(JSON))
    selected: bool = False
    core: dict | None = Field(default=None, sa_column=Column(JSON))
    """SAEBench core metrics (safesail.selection.core_metrics): a property of the weights, kept across
    reruns of selection, unlike ``selection``."""
    triage: dict | None = Field(default=None, sa_column=Column(JSON))
    """Safety candidates per concept from the SAE's last triage (None: never triaged); what
    the landscape across layers reads."""
    created_at: datetime = Field(default_factory=_now)
    model: str | None = None
    """The language model the SAE reads (None: the workspace's own model)."""
    hook: str | None = None
    """Where it reads, when known otherwise than by layer (e.g. "blocks.8.hook_mlp_out")."""


class ActivationChunk(SQLModel, table=True):
    """Sparse SAE activations of one chunk of texts: the resumable unit of collection."""

    sae_id: str = Field(primary_key=True, foreign_key="saerecord.id")
    chunk: int = Field(primary_key=True)
    n_texts: int
    n_tokens: int
    data: bytes = Field(sa_column=Column(LargeBinary))


class Feature(SQLModel, table=True):
    """Per-feature statistics, examples and safety triage of one SAE."""

    sae_id: str = Field(primary_key=True, foreign_key="saerecord.id")
    index: int = Field(primary_key=True)
    n_fire: int
    firing_rate: float
    mean_act: float
    max_act: float
    quantiles: dict[str, float] = Field(sa_column=Column(JSON))
    concept_stats: dict[str, list[float]] = Field(sa_column=Column(JSON))
    examples: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    candidate: bool = Field(default=False, index=True)
    concept: str | None = None
    safety_score: float | None = None
    auroc: float | None = None
    precision: float | None = None
    triage_reason: str | None = None
    """Why triage did not make it a candidate ("<kind>: <detail>", triage.text.reason_kind);
    None for candidates and for features not triaged yet."""


class Explanation(SQLModel, table=True):
    """A label for a feature: from a human, an automatic explainer, or an imported prior."""

    id: int | None = Field(default=None, primary_key=True)
    sae_id: str = Field(index=True, foreign_key="saerecord.id")
    feature: int = Field(index=True)
    source: str  # human | auto | prior
    status: str  # accepted | queued | rejected | failed
    concepts: list[str] = Field(sa_column=Column(JSON))
    text: str = ""
    confidence: float | None = None
    author: str | None = None  # annotator(s) for human labels, the LLM for automatic ones
    created_at: datetime = Field(default_factory=_now)
    model_version: str | None = None  # explainer / prompt version, or the Label Studio project
    probability: float | None = None  # calibrated P(agrees with experts), automatic labels only
    details: dict | None = Field(default=None, sa_column=Column(JSON))  # reason, ids, scores


class LabelTask(SQLModel, table=True):
    """Feature <-> Label Studio task, written in the same transaction as the push result, so a
    rerun (or a push killed midway) never creates a second task for a feature."""

    __table_args__ = (UniqueConstraint("project", "sae_id", "feature"),)
    id: int | None = Field(default=None, primary_key=True)
    project: str = Field(index=True)  # "<server url>#<project id>"
    sae_id: str = Field(foreign_key="saerecord.id")
    feature: int
    task_id: int = Field(index=True)
    batch: int  # push round
    strategy: str  # query strategy that picked it
    query_score: float | None = None
    annotators_wanted: int = 1  # 2 for the overlap share
    pushed_at: datetime = Field(default_factory=_now)


class Annotation(SQLModel, table=True):
    """One annotator's answer to one task, kept as it came back (never deleted): agreement and
    adjudication are computed from these rows into human Explanations."""

    __table_args__ = (UniqueConstraint("project", "annotation_id"),)
    id: int | None = Field(default=None, primary_key=True)
    project: str = Field(index=True)
    annotation_id: int  # Label Studio's id
    task_id: int = Field(index=True)
    sae_id: str = Field(foreign_key="saerecord.id")
    feature: int = Field(index=True)
    annotator: str
    concepts: list[str] = Field(sa_column=Column(JSON))
    confidence: float | None = None
    explanation: str = ""
    lead_time: float | None = None  # seconds the annotator spent
    created_at: datetime | None = None  # Label Studio's timestamps
    updated_at: datetime | None = None
    valid: bool = True  # False: kept aside, see problem
    problem: str | None = None
    raw: dict | None = Field(default=None, sa_column=Column(JSON))
    pulled_at: datetime = Field(default_factory=_now)


class LlmCall(SQLModel, table=True):
    """One LLM call: the cache (keyed by the request, so no call is paid twice) and the ledger
    of tokens, latency and estimated cost per feature and step."""

    key: str = Field(primary_key=True)  # sha256 of endpoint model + request
    model: str
    step: str = Field(index=True)  # explain | detection | fuzzing | simulation | ...
    sae_id: str | None = None
    feature: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None
    response: str = ""
    created_at: datetime = Field(default_factory=_now)


class Score(SQLModel, table=True):
    """One scorer's score of one explanation, with the scorer's model and prompt version."""

    id: int | None = Field(default=None, primary_key=True)
    explanation_id: int = Field(index=True, foreign_key="explanation.id")
    scorer: str  # detection | fuzzing | simulation | embedding | ...
    value: float
    model: str | None = None
    prompt_version: str | None = None
    details: dict | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=_now)


DB_URL_ENV = "SAFESAIL_DB_URL"
"""Environment variable holding the database URL (read by the CLI and the app): child processes
get the URL this way, never on their world-readable command line."""
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^/\s]*@")


def masked_url(url: str | None) -> str:
    """The URL with its password (if any) replaced by ***, for every message that shows one:
    `postgresql://u:secret@host/db` -> `postgresql://u:***@host/db`."""
    if not url:
        return str(url)
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", url)


def _masked(text: Any, url: str) -> str:
    """A driver's error message with the URL's password masked wherever it appears."""
    message = str(text).replace(url, masked_url(url))
    password = _URL_PASSWORD.match(url)
    if password:
        secret = url[password.end("head") : password.end() - 1]
        if secret:
            message = message.replace(secret, "***")
    return message


def open_db(url: str) -> Engine:
    """Open (and create) the database; a URL that cannot be opened is a one-line error (its
    password masked)."""
    shown = masked_url(url)
    try:
        engine = create_engine(url, **engine_options(url))
    except ImportError as exc:
        raise SafesailError(
            f"cannot open database URL '{shown}': its driver is not installed "
            f"({_masked(exc, url)}) — pip install it"
        ) from None
    except (ArgumentError, ValueError) as exc:
        raise SafesailError(f"cannot open database URL '{shown}' ({_masked(exc, url)}) — give --db-url as "
            "dialect+driver://user:password@host/name, or leave it out for the workspace's SQLite file") from None
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        SQLModel.metadata.create_all(engine)
        _add_missing_columns(engine)
    except OperationalError as exc:
        raise SafesailError(f"cannot open database '{shown}' ({_masked(exc.orig, url)}) — check the server runs "
            "and --db-url's host, port, user and password") from None
    return engine


def engine_options(url: str) -> dict[str, Any]:
    """PostgreSQL: sessions in UTC (the columns are `timestamp without time zone`, and an aware
    datetime is stored in the server's zone, so a server set to another zone would shift every
    timestamp) and a ping before reusing a pooled connection (a shared server restarts)."""
    if url.startswith("postgresql"):
        return {"connect_args": {"options": "-c timezone=UTC"}, "pool_pre_ping": True}
    return {}


def lock(session: Session, name: str) -> None:
    """Take turns with every other transaction that locks `name`, until this one ends: on
    PostgreSQL a transaction-scoped advisory lock (two `label pull`s of one project would
    otherwise insert the same answers and labels side by side); SQLite lets one writer at a
    time anyway."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})


def _add_missing_columns(engine: Engine) -> None:
    """Workspaces made by an older safesail gain the nullable columns added since (create_all
    creates missing tables, never missing columns)."""
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers (status, the app) work while a collection writes."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with Session(engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_meta(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(Meta, key)
    return default if row is None else row.value


def set_meta(session: Session, key: str, value: Any) -> None:
    """Write a setting. On PostgreSQL and SQLite an upsert: two processes writing the same new
    key (two pulls retraining the learner) would otherwise both insert it, and one would fail."""
    dialect = session.get_bind().dialect.name
    if dialect not in _UPSERT:
        row = session.get(Meta, key)
        if row is None:
            session.add(Meta(key=key, value=value))
        else:
            row.value = value
            session.add(row)
        return
    insert = _UPSERT[dialect](Meta).values(key=key, value=value)
    session.execute(
        insert.on_conflict_do_update(index_elements=["key"], set_={"value": insert.excluded.value})
    )
    loaded = session.identity_map.get(session.identity_key(Meta, key))
    if loaded is not None:  # keep a row this session already read in step with the database
        set_committed_value(loaded, "value", value)


_UPSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def pack_arrays(**arrays: np.ndarray) -> bytes:
    """npz bytes, portable across database engines (uncompressed: float32 activations barely
    compress, and compression cost more than the rest of storing a chunk)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_arrays(blob: bytes, prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays of a blob (only those whose name starts with prefix: npz reads lazily)."""
    with np.load(io.BytesIO(blob)) as data:
        return {name: data[name] for name in data.files if name.startswith(prefix)}


def pack_csr(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as small arrays: int16 columns when they fit; float32 values stay exact."""
    col_dtype = np.int16 if matrix.shape[1] < 2**15 else np.int32
    return {
        f"{prefix}_indptr": matrix.indptr.astype(np.int32),
        f"{prefix}_indices": matrix.indices.astype(col_dtype),
        f"{prefix}_data": matrix.data.astype(np.float32),
        f"{prefix}_shape": np.asarray(matrix.shape, dtype=np.int64),
    }


def unpack_csr(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
    return sp.csr_matrix(
        (
            arrays[f"{prefix}_data"],
            arrays[f"{prefix}_indices"].astype(np.int32),
            arrays[f"{prefix}_indptr"],
        ),
        shape=shape,
    )


def corpus_concepts(session: Session) -> dict[int, list[str]]:
    """Concept labels of every corpus text, by text id."""
    return {row.id: row.concepts for row in session.exec(select(CorpusText))}
