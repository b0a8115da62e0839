"""The workspace as the app reads it: the database (never created or written here), the
selected SAE, the language model and the rooms' typed records. Every page's "is there
anything yet" question goes through here, so an empty workspace reads the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db import queries
from safesail.db.contracts import CalibrationReport, LearnerState, read_engine
from safesail.db.labeling import AnnotationSummary
from safesail.db.tables import SaeRecord

_NEEDED_TABLES = {"meta", "feature", "saerecord", "explanation"}


def connect(workspace: Path, db_url: str | None = None) -> Engine | None:
    """A plain engine on the workspace database, or None when there is none yet (a missing
    SQLite file is not created: the app only reads)."""
    if db_url is None:
        path = workspace / "safesail.db"
        if not path.is_file():
            return None
        db_url = f"sqlite:///{path}"
    engine = create_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    except Exception:  # noqa: BLE001 - an unreachable database reads as "nothing yet"
        return None
    return engine if tables >= _NEEDED_TABLES else None


def selected_sae(engine: Engine) -> str | None:
    with Session(engine) as session:
        return queries.selected_sae(session)


def model_name(engine: Engine) -> str | None:
    """The language model `collect` ran (None before it), which the inspector loads."""
    with Session(engine) as session:
        return queries.model_name(session)


def learner_state(engine: Engine) -> LearnerState | None:
    """The active learner's last fit (None until the labeling loop fitted it)."""
    return read_engine(engine, LearnerState)


def calibration_report(engine: Engine) -> CalibrationReport | None:
    """The explainer's last calibration (None until it ran)."""
    return read_engine(engine, CalibrationReport)


def annotation_summary(engine: Engine) -> AnnotationSummary | None:
    """The labeling loop's last pull (None until it ran)."""
    return read_engine(engine, AnnotationSummary)


def sae_list(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [
            {"id": r.id, "layer": r.layer, "d_sae": r.d_sae}
            for r in session.exec(select(SaeRecord).order_by(SaeRecord.layer, SaeRecord.id))
        ]
