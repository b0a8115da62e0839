"""The questions every room asks of the workspace database, answered once.

Before this module the rooms each wrote their own query for "the human label of a feature"
(with three tie rules), "which features are taken", "which SAE is selected" and "what
coverage state is a candidate in"; they disagreed at the edges. Every room calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session, select

from safesail.db.tables import Explanation, Feature, LabelTask, SaeRecord, get_meta
from safesail.errors import SafesailError

T = TypeVar("T")

IN_CHUNK = 900
"""Values per `IN (...)` list: under SQLite's oldest bound-parameter limit (999) with room for
a query's other parameters; PostgreSQL takes at most 65,535 per statement, and an SAE has more
features than that."""


def chunked(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """The values in lists of at most `size`: one query per list, never one `IN` list holding
    every feature or text id."""
    it = iter(values)
    while part := list(islice(it, size)):
        yield part


NO_SAE_SELECTED = (
    "no SAE selected yet — run `safesail select` and `safesail triage` (or `safesail demo`)"
)

COVERAGE_STATES = ("human-labeled", "auto-accepted", "queued for humans", "unexplained")
"""Coverage states of a safety candidate, best first (the app's stacked bars keep this order)."""


NO_SAES = "no SAEs in this workspace — run `safesail sae train` or `safesail sae add`"
LIST_SAES = "`safesail sae list` shows the SAEs here"
"""The what-to-do of every unknown-SAE error: one wording, one place."""


def require_saes(engine: Engine) -> None:
    """The one-line error that says how to get an SAE, when the workspace has none."""
    with Session(engine) as session:
        if session.exec(select(SaeRecord.id).limit(1)).first() is None:
            raise SafesailError(NO_SAES)


def check_model(stored: str | None, name: str) -> None:
    """A workspace holds one model's activations (``stored``): another model's would not be
    comparable with them, so asking for ``name`` instead is an error."""
    if stored is not None and stored != name:
        raise SafesailError(
            f"this workspace was built with model '{stored}', not '{name}' — pass --model {stored}, "
            "or use another --workspace"
        )


def selected_sae(session: Session) -> str | None:
    """The SAE `safesail select` chose: the one record marked selected (written in the same
    transaction as the selection scores, so the two never disagree)."""
    return session.exec(
        select(SaeRecord.id).where(SaeRecord.selected).order_by(SaeRecord.id)
    ).first()


def model_name(session: Session) -> str | None:
    """The language model whose activations this workspace holds (None before collection)."""
    return get_meta(session, "model")


def require_selected_sae(engine: Engine) -> str:
    """The selected SAE's id, or the one-line error that says how to get one."""
    with Session(engine) as session:
        sae_id = selected_sae(session)
    if sae_id is None:
        raise SafesailError(NO_SAE_SELECTED)
    return sae_id


SOURCE_RANK = {"human": 0, "auto": 1, "prior": 2}
"""Which label a feature shows when it has several: the experts', then the calibrated
explainer's, then an imported prior's (unknown sources last)."""


def _latest_first(query: Any) -> Any:
    """THE tie rule of every label query: the latest made (created_at, then id) wins."""
    return query.order_by(Explanation.created_at.desc(), Explanation.id.desc())


def human_labels(
    session: Session,
    sae_id: str,
    *,
    features: list[int] | None = None,
    status: str | None = "accepted",
    project: str | None = None,
) -> dict[int, Explanation]:
    """Each feature's human label: its latest human Explanation (created_at, then id) with that
    status (None: any status), optionally only those a Label Studio project made. The one rule
    for "the human label of a feature": the explainer's gold set, the learner's labels, the
    labeling loop's adjudication and `best_accepted` all read it from here."""
    query = select(Explanation).where(Explanation.sae_id == sae_id, Explanation.source == "human")
    if status is not None:
        query = query.where(Explanation.status == status)
    if project is not None:
        query = query.where(Explanation.model_version == project)
    parts = [None] if features is None else list(chunked(features))
    out: dict[int, Explanation] = {}
    for part in parts:  # a feature's rows all fall in one part: the tie rule holds per part
        chosen = query if part is None else query.where(Explanation.feature.in_(part))
        for e in session.exec(_latest_first(chosen)):
            out.setdefault(e.feature, e)
    return out


def best_accepted(session: Session, sae_id: str) -> dict[int, Explanation]:
    """Each feature's accepted explanation of the best-ranked source; within a source the
    latest wins (the rule of `human_labels`, so a feature's human label is the same here)."""
    best: dict[int, Explanation] = {}
    query = select(Explanation).where(
        Explanation.sae_id == sae_id, Explanation.status == "accepted"
    )
    for e in session.exec(_latest_first(query)):
        held = best.get(e.feature)
        if held is None or SOURCE_RANK.get(e.source, 3) < SOURCE_RANK.get(held.source, 3):
            best[e.feature] = e
    return best


def taken_features(session: Session, sae_id: str) -> set[int]:
    """Features no expert should be asked about again: any human label (whatever its
    status), an accepted automatic explanation, or a label task already pushed."""
    human = select(Explanation.feature).where(
        Explanation.sae_id == sae_id, Explanation.source == "human"
    )
    auto = select(Explanation.feature).where(
        Explanation.sae_id == sae_id,
        Explanation.source == "auto",
        Explanation.status == "accepted",
    )
    tasks = select(LabelTask.feature).where(LabelTask.sae_id == sae_id)
    return {int(f) for query in (human, auto, tasks) for f in session.exec(query)}


def coverage_states(session: Session, sae_id: str) -> dict[int, tuple[str | None, str]]:
    """Each safety candidate's (triage concept, coverage state): human-labeled, auto-accepted,
    queued for humans (an automatic explanation not accepted) or unexplained."""
    candidates = session.exec(
        select(Feature.index, Feature.concept).where(Feature.sae_id == sae_id, Feature.candidate)
    ).all()
    open_auto = set(
        session.exec(
            select(Explanation.feature).where(
                Explanation.sae_id == sae_id,
                Explanation.source == "auto",
                Explanation.status != "accepted",
            )
        )
    )
    accepted = best_accepted(session, sae_id)
    out: dict[int, tuple[str | None, str]] = {}
    for index, concept in candidates:
        e = accepted.get(index)
        if e is not None and e.source == "human":
            state = COVERAGE_STATES[0]
        elif e is not None and e.source == "auto":
            state = COVERAGE_STATES[1]
        elif index in open_auto:
            state = COVERAGE_STATES[2]
        else:
            state = COVERAGE_STATES[3]
        out[int(index)] = (concept, state)
    return out


def remove_sae(engine: Engine, sae_id: str, *, force: bool = False) -> dict[str, int]:
    """Delete an SAE's record and every row that hangs on it, in one transaction (a bad SAE
    must not block the workspace, and a half-removed one would be worse). The tables are
    read from the database itself, so the rooms' tables (which the core does not import) are
    cleared too: rows with this `sae_id`, then rows pointing at those. Refuses the selected
    SAE unless `force`. Returns the rows deleted per table."""
    from sqlalchemy import MetaData, delete
    from sqlalchemy import select as core_select

    from safesail.db.tables import SaeRecord, session_scope

    tables = MetaData()
    tables.reflect(engine)
    deleted: dict[str, int] = {}
    with session_scope(engine) as session:
        if session.get(SaeRecord, sae_id) is None:
            raise SafesailError(
                f"no SAE '{sae_id}' in this workspace — `safesail sae list` shows them"
            )
        if selected_sae(session) == sae_id and not force:
            raise SafesailError(
                f"SAE '{sae_id}' is the selected one — select another first, or pass --force"
            )
        owned = {
            t.name: t for t in tables.sorted_tables if "sae_id" in t.c and t.name != "saerecord"
        }
        for table in reversed(tables.sorted_tables):
            for key in table.foreign_keys:
                parent = owned.get(key.column.table.name)
                if parent is not None and table.name not in owned:
                    ids = core_select(key.column).where(parent.c.sae_id == sae_id)
                    result = session.execute(delete(table).where(key.parent.in_(ids)))
                    deleted[table.name] = deleted.get(table.name, 0) + result.rowcount
        for table in reversed(tables.sorted_tables):
            if table.name in owned:
                result = session.execute(delete(table).where(table.c.sae_id == sae_id))
                deleted[table.name] = deleted.get(table.name, 0) + result.rowcount
        session.delete(session.get(SaeRecord, sae_id))
    return {name: n for name, n in deleted.items() if n}
