"""Push the next features to Label Studio as tasks, never losing or duplicating one.

The feature <-> task mapping (LabelTask) is written in the same transaction that records a
push. Before each import the keys about to be pushed are saved as pending (Meta PENDING, private
to this room); a rerun after a crash between the HTTP import and that commit finds the tasks on
the server by the `safesail_key` in their data and adopts them instead of importing them again.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

from sqlmodel import Session, func, select

from annotation.project import ensure_project, update_summary
from annotation.settings import PushConfig
from annotation.tasks import auto_predictions, build_tasks, prediction, task_key
from annotation.transport import Client, ClientConfig, open_client
from safesail.db.contracts import (
    Learner,
    LearnerFactory,
    LearnerQuery,
    LearnerState,
    Workspace,
    read_record,
)
from safesail.db.queries import NO_SAE_SELECTED, human_labels, selected_sae, taken_features
from safesail.db.tables import Feature, LabelTask, get_meta, session_scope, set_meta
from safesail.errors import SafesailError
from safesail.plugins import learner_factory

PENDING = "annotation_pending"
"""Meta key of the keys of an import in flight (see the module docstring)."""


class PushResult(NamedTuple):
    project: str
    pushed: int
    adopted: int  # tasks found on the server from an interrupted push
    batch: int
    strategy: str
    total_tasks: int


def _query(
    session: Session, learner: Learner | None, sae_id: str, n: int, exclude: set[int]
) -> list[LearnerQuery]:
    """The next features to label: the active learner's query, or (while no room offers a
    learner) the untaken safety candidates by triage score."""
    if learner is not None:
        return learner.query(n, exclude)
    taken = exclude | taken_features(session, sae_id)
    rows = session.exec(
        select(Feature.index, Feature.safety_score)
        .where(Feature.sae_id == sae_id, Feature.examples.is_not(None))
        .order_by(Feature.candidate.desc(), Feature.safety_score.desc(), Feature.index)
    )
    picked = [(f, s) for f, s in rows if f not in taken][:n]
    return [LearnerQuery(sae_id, f, s, "safety_score") for f, s in picked]


def _learner_predictions(
    session: Session, learner: Learner | None, features: list[int]
) -> dict[int, list[dict]]:
    """Pre-annotations from the active learner, once it has been trained."""
    if learner is None or read_record(session, LearnerState) is None:
        return {}
    version = learner.model_version
    return {
        f: [prediction(p.concepts, "", version, p.probability)]
        for f, p in learner.predict(features).items()
        if p.concepts
    }


def queue_fields(queries: list[LearnerQuery], start: int) -> dict[int, dict[str, Any]]:
    """Task data that carries the learner's order into Label Studio: Community Edition has no
    active-learning queue, so an annotator sorts the Data Manager by `queue_position` (or
    follows its default sequential order, which is the import order, the same) and labels
    top-down what the learner wants most. Positions continue after the `start` tasks the
    project already holds, so a later batch queues behind the earlier ones."""
    return {
        q.feature: {
            "queue_position": start + rank + 1,
            "query_score": None if q.score is None else round(float(q.score), 6),
            "query_strategy": q.strategy,
        }
        for rank, q in enumerate(queries)
    }


def wants_two(key: str, overlap: float) -> bool:
    """Whether a task is in the overlap share (stable per feature: a hash, not a coin flip)."""
    return zlib.crc32(key.encode()) / 2**32 < overlap


def push(
    ws: Workspace,
    n: int = 20,
    *,
    strategy: str | None = None,
    overlap: float = 0.2,
    config: ClientConfig | None = None,
    progress: bool = True,
    make_learner: LearnerFactory | None = None,
) -> PushResult:
    """Query the next n features and push them as tasks (with pre-annotations). After the
    project is found and an interrupted import adopted, everything the tasks need is read in
    one session and the imports are recorded through one more. `make_learner`: the learner
    factory a caller that pushes and pulls several times found once (None: look it up)."""
    try:
        PushConfig(batch=n, strategy=strategy, overlap=overlap)
    except ValueError as exc:
        raise SafesailError(f"{exc} — fix that flag (`safesail label push --help`)") from None
    client = open_client(ws, config)
    project_id, key = ensure_project(ws, client)
    adopted = reconcile(ws, client, project_id, key)
    factory = make_learner or learner_factory()
    learner = factory(ws, strategy) if factory is not None else None
    with Session(ws.engine) as session:
        sae_id = selected_sae(session)
        if sae_id is None:
            raise SafesailError(NO_SAE_SELECTED)
        pushed = set(
            session.exec(
                select(LabelTask.feature).where(
                    LabelTask.project == key, LabelTask.sae_id == sae_id
                )
            )
        )
        labeled = set(human_labels(session, sae_id))
        batch = (
            session.exec(select(func.max(LabelTask.batch)).where(LabelTask.project == key)).one()
            or 0
        ) + 1
        queued = _task_count(session, key)
        queries = _query(session, learner, sae_id, n, pushed | labeled)
        features = [q.feature for q in queries]
        predictions = auto_predictions(session, sae_id, features)
        for f, preds in _learner_predictions(session, learner, features).items():
            predictions.setdefault(f, []).extend(preds)
        wanted = {f: 2 if wants_two(task_key(sae_id, f), overlap) else 1 for f in features}
        tasks = build_tasks(
            session, sae_id, features, wanted, predictions, queue_fields(queries, queued)
        )
    info = {q.feature: q for q in queries}
    with Session(ws.engine) as session:
        n_pushed = _import_tasks(session, client, project_id, key, tasks, batch, info, progress)
        total = _task_count(session, key)
    return PushResult(key, n_pushed, adopted, batch, queries[0].strategy if queries else "-", total)


def import_tasks(
    ws: Workspace,
    client: Client,
    project_id: int,
    key: str,
    tasks: list[dict[str, Any]],
    batch: int,
    info: dict[int, LearnerQuery] | None = None,
    progress: bool = True,
) -> int:
    """Import tasks in batches; each batch's LabelTask rows commit with its push record."""
    with Session(ws.engine) as session:
        return _import_tasks(session, client, project_id, key, tasks, batch, info, progress)


def _import_tasks(
    session: Session,
    client: Client,
    project_id: int,
    key: str,
    tasks: list[dict[str, Any]],
    batch: int,
    info: dict[int, LearnerQuery] | None,
    progress: bool,
) -> int:
    """`import_tasks` through the caller's write session: each batch's pending keys commit
    before its HTTP import, its LabelTask rows with its push record after it (an error rolls
    back only what is not yet committed)."""
    from tqdm import tqdm

    info = info or {}
    done = 0
    size = client.config.import_batch
    with tqdm(total=len(tasks), desc="push tasks", unit="task", disable=not progress) as bar:
        for start in range(0, len(tasks), size):
            chunk = tasks[start : start + size]
            keys = [t["data"]["safesail_key"] for t in chunk]
            set_meta(session, PENDING, {"project": key, "batch": batch, "keys": keys})
            session.commit()
            ids = _import_once(client, project_id, chunk)
            record_push(session, key, ids, batch, info)
            session.commit()
            done += len(chunk)
            bar.update(len(chunk))
    return done


def _import_once(
    client: Client, project_id: int, chunk: list[dict[str, Any]]
) -> dict[str, tuple[int, int]]:
    """Import a chunk of tasks, retried idempotently: an import is not idempotent, and a
    transport error (a read timeout above all) may come after the server stored the tasks, so
    every retry first adopts the chunk's tasks already on the server (by `safesail_key`) and
    imports only the rest. Returns safesail_key -> (task id, annotators wanted)."""
    wanted = {t["data"]["safesail_key"]: int(t["data"]["annotators_wanted"]) for t in chunk}
    found: dict[str, tuple[int, int]] = {}
    tries = 0

    def attempt() -> None:
        nonlocal tries
        tries += 1
        if tries > 1:  # an earlier attempt failed, maybe after the server imported it
            on_server = server_keys(client, project_id)
            found.update({k: on_server[k] for k in wanted if k in on_server and k not in found})
        rest = [t for t in chunk if t["data"]["safesail_key"] not in found]
        if not rest:
            return
        response = client.sdk.projects.import_tasks(project_id, request=rest, return_task_ids=True)
        ids = list(response.task_ids or [])
        if len(ids) != len(rest):
            raise SafesailError(
                f"Label Studio returned {len(ids)} task ids for {len(rest)} tasks — "
                "rerun `safesail label push` to reconcile"
            )
        for task, task_id in zip(rest, ids, strict=True):
            skey = task["data"]["safesail_key"]
            found[skey] = (task_id, wanted[skey])

    client.call(attempt)
    return found


def record_push(
    session: Session,
    key: str,
    ids: dict[str, tuple[int, int]],
    batch: int,
    info: dict[int, LearnerQuery],
) -> None:
    """What one transaction (the caller commits it) holds: the LabelTask rows (key -> task id,
    annotators wanted), the cleared pending marker, the task count."""
    present = set(session.exec(select(LabelTask.task_id).where(LabelTask.project == key)))
    for skey, (task_id, wanted) in ids.items():
        if task_id in present:
            continue
        sae_id, feature = skey.rsplit(":", 1)
        q = info.get(int(feature))
        session.add(
            LabelTask(
                project=key,
                sae_id=sae_id,
                feature=int(feature),
                task_id=task_id,
                batch=batch,
                strategy=q.strategy if q else "adopted",
                query_score=q.score if q else None,
                annotators_wanted=wanted,
            )
        )
    session.flush()
    set_meta(session, PENDING, None)
    update_summary(session, tasks=_task_count(session, key))


def _task_count(session: Session, key: str) -> int:
    return session.exec(
        select(func.count()).select_from(LabelTask).where(LabelTask.project == key)
    ).one()


def server_keys(client: Client, project_id: int) -> dict[str, tuple[int, int]]:
    """safesail_key -> (task id, annotators wanted) of every task in the project."""

    def fetch() -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for task in client.sdk.tasks.list(project=project_id, include="id,data", page_size=500):
            data = task.data or {}
            if (skey := data.get("safesail_key")) and skey not in out:
                out[skey] = (task.id, int(data.get("annotators_wanted", 1)))
        return out

    return client.call(fetch)


def reconcile(ws: Workspace, client: Client, project_id: int, key: str) -> int:
    """Adopt the tasks of an interrupted import (pending keys found on the server)."""
    with Session(ws.engine) as session:
        pending = get_meta(session, PENDING)
    if not pending or pending.get("project") != key:
        return 0
    on_server = server_keys(client, project_id)
    found = {k: on_server[k] for k in pending["keys"] if k in on_server}
    with session_scope(ws.engine) as session:
        record_push(session, key, found, pending["batch"], {})
    return len(found)
