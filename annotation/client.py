"""Push features to Label Studio as tasks and pull annotations back as human labels.

Never lose or duplicate: the feature <-> task mapping (LabelTask) is written in the same
transaction that records a push. Before each import the keys about to be pushed are saved as
"pending"; a rerun after a crash between the HTTP import and that commit finds the tasks on the
server by the `safesail_key` in their data and adopts them instead of importing them again.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlmodel import Session, func, select

from annotation import server
from annotation.agreement import ADJUDICATION_RULE, Answer, adjudicate, kappa_per_concept
from annotation.config import CONCEPTS, CONFIDENCE, EXPLANATION, MAX_RATING, label_config
from annotation.tasks import auto_predictions, build_tasks, prediction, task_key
from safesail.errors import SafesailError
from safesail.storage import (
    Annotation,
    Explanation,
    Feature,
    LabelTask,
    get_meta,
    human_labels,
    session_scope,
    set_meta,
)
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

META = "annotation"
"""Meta key of this room's summary (reported verbatim by `safesail status`)."""
PENDING = "annotation_pending"
"""Meta key of the keys of an import in flight (see the module docstring)."""
WITHDRAWN = "withdrawn"
"""Status of a human label whose answers in Label Studio all became invalid or were deleted."""
T = TypeVar("T")


@dataclass(frozen=True)
class ClientConfig:
    """How the app talks to Label Studio."""

    url: str | None = None
    """An external Label Studio (None: the workspace's managed server)."""
    token_file: Path | None = None
    """File (0600) holding the external server's API token; else $LABEL_STUDIO_API_KEY."""
    retries: int = 4
    """Attempts after the first on connection errors, timeouts, 429 and 5xx."""
    backoff: float = 1.0
    """Seconds before the first retry, doubled each time."""
    timeout: float = 60.0
    """Seconds per HTTP request."""
    import_batch: int = 1000
    """Tasks per import request."""

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0 or self.import_batch < 1:
            raise ValueError("need retries >= 0, backoff >= 0, timeout > 0, import_batch >= 1")


class Client:
    """The SDK client plus retries with exponential backoff and one-line errors."""

    def __init__(self, url: str, token: str, config: ClientConfig) -> None:
        from label_studio_sdk import LabelStudio

        self.url, self.config = url.rstrip("/"), config
        self.sdk = LabelStudio(
            base_url=self.url, api_key=token, timeout=config.timeout, max_retries=0
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs), retried on transient failures; anything else is one line."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        delay = self.config.backoff
        for attempt in range(self.config.retries + 1):
            try:
                return fn(*args, **kwargs)
            except (httpx.TransportError, ApiError) as exc:
                code = getattr(exc, "status_code", None)
                if code in (401, 403):
                    raise SafesailError(
                        f"Label Studio at {self.url} refused the API token ({code})"
                    ) from None
                transient = code is None or code == 429 or code >= 500
                if not transient:
                    body = str(getattr(exc, "body", exc))[:200]
                    raise SafesailError(f"Label Studio at {self.url}: {code} {body}") from None
                if attempt == self.config.retries:
                    what = f"HTTP {code}" if code else type(exc).__name__
                    raise SafesailError(
                        f"Label Studio at {self.url} is unreachable or failing ({what}) after "
                        f"{attempt + 1} attempts; start it (`safesail labelstudio up`) and rerun: "
                        "the run resumes where it stopped"
                    ) from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _token_from_file(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SafesailError(f"token file {path} is readable by others; chmod 600 it")
    return path.read_text().strip()


def open_client(ws: Any, config: ClientConfig | None = None) -> Client:
    """A client for the external server (url + token) or the workspace's managed one."""
    config = config or ClientConfig()
    if config.url:
        if config.token_file:
            token = _token_from_file(Path(config.token_file))
        elif os.environ.get("LABEL_STUDIO_API_KEY"):
            token = os.environ["LABEL_STUDIO_API_KEY"]
        else:
            raise SafesailError(
                "--ls-url needs a token: set LABEL_STUDIO_API_KEY or pass --ls-token-file"
            )
        return Client(config.url, token, config)
    p = server.paths(ws.config.workspace)
    if not p.state.exists():
        raise SafesailError(
            "Label Studio is not started for this workspace: run `safesail labelstudio up` "
            "(or pass --ls-url for an existing server)"
        )
    import json

    url = json.loads(p.state.read_text())["url"]
    return Client(url, server.credentials(ws.config.workspace)["token"], config)


def _title(ws: Any, sae_id: str) -> str:
    """Unique per workspace (path hash) and SAE; Label Studio allows 50 characters."""
    path = str(Path(ws.config.workspace).resolve())
    digest = hashlib.sha1(path.encode()).hexdigest()[:6]
    return f"safesail {Path(path).name[:14]} {sae_id[:18]} {digest}"


def ensure_project(ws: Any, client: Client) -> tuple[int, str]:
    """The project's id and key ("<url>#<id>"): reused from Meta, found by title (a crash
    after creating it), or created."""
    from label_studio_sdk.core.api_error import ApiError

    sae_id = _sae(ws)
    with Session(ws.engine) as session:
        meta = get_meta(session, META) or {}
    if meta.get("url") == client.url and meta.get("sae_id") == sae_id and meta.get("project"):
        try:
            client.call(client.sdk.projects.get, meta["project"])
            return meta["project"], f"{client.url}#{meta['project']}"
        except SafesailError as exc:
            if "404" not in str(exc):
                raise
        except ApiError:
            pass
    title = _title(ws, sae_id)
    found = [p for p in client.call(lambda: list(client.sdk.projects.list())) if p.title == title]
    if found:
        project_id = found[0].id
    else:
        project = client.call(
            client.sdk.projects.create,
            title=title,
            description=f"safesail: label the features of SAE {sae_id} ({ws.config.workspace})",
            label_config=label_config(ws.taxonomy),
        )
        project_id = project.id
    with session_scope(ws.engine) as session:
        meta = get_meta(session, META) or {}
        meta.update(url=client.url, project=project_id, sae_id=sae_id, title=title)
        set_meta(session, META, meta)
    return project_id, f"{client.url}#{project_id}"


def _sae(ws: Any) -> str:
    sae_id = ws.selected_sae
    if sae_id is None:
        raise SafesailError("no SAE selected yet: run `safesail select` and `safesail triage`")
    return sae_id


# -- push ---------------------------------------------------------------------------------------
class PushResult(NamedTuple):
    project: str
    pushed: int
    adopted: int  # tasks found on the server from an interrupted push
    batch: int
    strategy: str
    total_tasks: int


class _Query(NamedTuple):
    feature: int
    score: float | None
    strategy: str


def _query(ws: Any, n: int, strategy: str | None, exclude: set[int]) -> list[_Query]:
    """The next features to label: the active learner's query, or (until that room is
    installed) the unlabeled safety candidates by triage score."""
    try:
        from active_learning.learner import ALConfig, query_features
    except ImportError:
        query_features = None
    if query_features is not None:
        config = ALConfig(strategy=strategy) if strategy else None
        return [
            _Query(q.feature, q.score, q.strategy)
            for q in query_features(ws, n, config, exclude=exclude)
        ]
    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature.index, Feature.safety_score)
            .where(Feature.sae_id == _sae(ws), Feature.examples.is_not(None))
            .order_by(Feature.candidate.desc(), Feature.safety_score.desc(), Feature.index)
        )
        picked = [(f, s) for f, s in rows if f not in exclude][:n]
    return [_Query(f, s, "safety_score") for f, s in picked]


def _learner_predictions(ws: Any, features: list[int]) -> dict[int, list[dict]]:
    """Pre-annotations from the active learner, once it has been trained."""
    with Session(ws.engine) as session:
        if get_meta(session, "learner") is None:
            return {}
    try:
        from active_learning.learner import predict
    except ImportError:
        return {}
    return {
        f: [prediction(p.concepts, "", p.model_version, p.probability)]
        for f, p in predict(ws, features).items()
        if p.concepts
    }


def wants_two(key: str, overlap: float) -> bool:
    """Whether a task is in the overlap share (stable per feature: a hash, not a coin flip)."""
    return zlib.crc32(key.encode()) / 2**32 < overlap


def push(
    ws: Any,
    n: int = 20,
    *,
    strategy: str | None = None,
    overlap: float = 0.2,
    config: ClientConfig | None = None,
    progress: bool = True,
) -> PushResult:
    """Query the next n features and push them as tasks (with pre-annotations)."""
    if n < 1 or not 0 <= overlap <= 1:
        raise SafesailError("need --batch >= 1 and --overlap in [0, 1]")
    client = open_client(ws, config)
    project_id, key = ensure_project(ws, client)
    sae_id = _sae(ws)
    adopted = reconcile(ws, client, project_id, key)
    with Session(ws.engine) as session:
        pushed = set(
            session.exec(
                select(LabelTask.feature).where(
                    LabelTask.project == key, LabelTask.sae_id == sae_id
                )
            )
        )
        labeled = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == sae_id,
                    Explanation.source == "human",
                    Explanation.status == "accepted",
                )
            )
        )
        batch = (
            session.exec(select(func.max(LabelTask.batch)).where(LabelTask.project == key)).one()
            or 0
        ) + 1
    queries = _query(ws, n, strategy, pushed | labeled)
    features = [q.feature for q in queries]
    predictions = auto_predictions_for(ws, sae_id, features)
    for f, preds in _learner_predictions(ws, features).items():
        predictions.setdefault(f, []).extend(preds)
    wanted = {f: 2 if wants_two(task_key(sae_id, f), overlap) else 1 for f in features}
    with Session(ws.engine) as session:
        tasks = build_tasks(session, sae_id, features, wanted, predictions)
    info = {q.feature: q for q in queries}
    n_pushed = import_tasks(ws, client, project_id, key, tasks, batch, info, progress)
    total = _count_tasks(ws, key)
    return PushResult(key, n_pushed, adopted, batch, queries[0].strategy if queries else "-", total)


def auto_predictions_for(ws: Any, sae_id: str, features: list[int]) -> dict[int, list[dict]]:
    with Session(ws.engine) as session:
        return auto_predictions(session, sae_id, features)


def import_tasks(
    ws: Any,
    client: Client,
    project_id: int,
    key: str,
    tasks: list[dict[str, Any]],
    batch: int,
    info: dict[int, _Query] | None = None,
    progress: bool = True,
) -> int:
    """Import tasks in batches; each batch's LabelTask rows commit with its push record."""
    from tqdm import tqdm

    info = info or {}
    done = 0
    size = client.config.import_batch
    with tqdm(total=len(tasks), desc="push tasks", unit="task", disable=not progress) as bar:
        for start in range(0, len(tasks), size):
            chunk = tasks[start : start + size]
            keys = [t["data"]["safesail_key"] for t in chunk]
            with session_scope(ws.engine) as session:
                set_meta(session, PENDING, {"project": key, "batch": batch, "keys": keys})
            ids = _import_once(client, project_id, chunk)
            record_push(ws, key, ids, batch, info)
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
                f"Label Studio returned {len(ids)} task ids for {len(rest)} tasks; "
                "rerun to reconcile"
            )
        for task, task_id in zip(rest, ids, strict=True):
            skey = task["data"]["safesail_key"]
            found[skey] = (task_id, wanted[skey])

    client.call(attempt)
    return found


def record_push(
    ws: Any, key: str, ids: dict[str, tuple[int, int]], batch: int, info: dict[int, _Query]
) -> None:
    """One transaction: the LabelTask rows (key -> task id, annotators wanted), the cleared
    pending marker, the task count."""
    with session_scope(ws.engine) as session:
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
        meta = get_meta(session, META) or {}
        meta["tasks"] = session.exec(
            select(func.count()).select_from(LabelTask).where(LabelTask.project == key)
        ).one()
        set_meta(session, META, meta)


def _count_tasks(ws: Any, key: str) -> int:
    with Session(ws.engine) as session:
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


def reconcile(ws: Any, client: Client, project_id: int, key: str) -> int:
    """Adopt the tasks of an interrupted import (pending keys found on the server)."""
    with Session(ws.engine) as session:
        pending = get_meta(session, PENDING)
    if not pending or pending.get("project") != key:
        return 0
    on_server = server_keys(client, project_id)
    found = {k: on_server[k] for k in pending["keys"] if k in on_server}
    record_push(ws, key, found, pending["batch"], {})
    return len(found)


# -- pull ---------------------------------------------------------------------------------------
class PullResult(NamedTuple):
    project: str
    new: int
    updated: int
    invalid: int
    problems: list[str]
    features_labeled: int
    kappa: dict[str, Any]
    learner: str
    deleted: int = 0  # annotations deleted in Label Studio since the last pull (removed here)


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _naive_utc(value: datetime | None) -> datetime | None:
    """SQLite drops tzinfo: compare timestamps as naive UTC."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def parse_result(raw: dict[str, Any], values: list[str]) -> tuple[dict[str, Any], str | None]:
    """An annotation's fields and the first problem found (None when valid)."""
    if raw.get("was_cancelled"):
        return {"concepts": [], "confidence": None, "explanation": ""}, "skipped by annotator"
    fields: dict[str, Any] = {"concepts": [], "confidence": None, "explanation": ""}
    problems = []
    for item in raw.get("result") or []:
        if not isinstance(item, dict):
            problems.append("result item is not an object")
            continue
        name, value = item.get("from_name"), item.get("value") or {}
        if name == CONCEPTS:
            fields["concepts"] = list(value.get("choices") or [])
        elif name == CONFIDENCE:
            fields["confidence"] = value.get("rating")
        elif name == EXPLANATION:
            fields["explanation"] = " ".join(str(t) for t in value.get("text") or []).strip()
        else:
            problems.append(f"unknown field '{name}'")
    concepts, confidence = fields["concepts"], fields["confidence"]
    unknown = [c for c in concepts if c not in values]
    if not concepts:
        problems.insert(0, "no concept chosen")
    elif unknown:
        problems.insert(0, f"unknown concept(s) {', '.join(map(str, unknown))}")
    elif len(concepts) > 1 and ({BENIGN, UNINTERPRETABLE} & set(concepts)):
        problems.insert(0, "'not safety-related'/'not interpretable' combined with other labels")
    if not isinstance(confidence, int | float) or not 1 <= confidence <= MAX_RATING:
        problems.append("missing or out-of-range confidence")
    return fields, (problems[0] if problems else None)


def pull(
    ws: Any,
    *,
    config: ClientConfig | None = None,
    retrain: bool = True,
    progress: bool = True,
) -> PullResult:
    """Store new or changed annotations, adjudicate per feature, report agreement, retrain."""
    client = open_client(ws, config)
    project_id, key = ensure_project(ws, client)
    reconcile(ws, client, project_id, key)
    values = ws.taxonomy.label_values()
    users = {
        u.id: u.email or u.username for u in client.call(lambda: list(client.sdk.users.list()))
    }

    def fetch() -> list[Any]:
        # every task, not only_annotated: a task whose answers were all deleted (or only
        # skipped) must still be seen to tell what is gone
        return list(client.sdk.tasks.list(project=project_id, fields="all", page_size=200))

    tasks = client.call(fetch)
    new = updated = 0
    touched: set[tuple[str, int]] = set()
    with session_scope(ws.engine) as session:
        mapping = {
            t.task_id: t for t in session.exec(select(LabelTask).where(LabelTask.project == key))
        }
        stored = {
            a.annotation_id: a
            for a in session.exec(select(Annotation).where(Annotation.project == key))
        }
        seen: set[int] = set()
        for task in tasks:
            label_task = mapping.get(task.id)
            if label_task is None:
                continue  # a task not pushed by this workspace
            for raw in task.annotations or []:
                raw = dict(raw)
                seen.add(raw["id"])
                row = stored.get(raw["id"])
                changed = _parse_time(raw.get("updated_at"))
                if row is not None and _naive_utc(row.updated_at) == _naive_utc(changed):
                    continue
                fields, problem = parse_result(raw, values)
                who = raw.get("completed_by")
                who = who.get("id") if isinstance(who, dict) else who
                if row is None:
                    row = Annotation(project=key, annotation_id=raw["id"], task_id=task.id,
                                     sae_id=label_task.sae_id, feature=label_task.feature,
                                     annotator="", concepts=[])  # fmt: skip
                    new += 1
                else:
                    updated += 1
                row.annotator = users.get(who, str(who))
                row.concepts = fields["concepts"]
                row.confidence = fields["confidence"] if problem is None else None
                row.explanation = fields["explanation"]
                row.lead_time = raw.get("lead_time")
                row.created_at = _parse_time(raw.get("created_at"))
                row.updated_at = changed
                row.valid, row.problem, row.raw = problem is None, problem, raw
                session.add(row)
                touched.add((label_task.sae_id, label_task.feature))
        deleted = 0
        for annotation_id, row in stored.items():
            # gone from Label Studio (the task list is complete: every page, every task
            # of the project): removed here too, and its feature adjudicated again
            if annotation_id not in seen and row.task_id in mapping:
                session.delete(row)
                touched.add((row.sae_id, row.feature))
                deleted += 1
        session.flush()
        _adjudicate(session, key, touched)
        summary = _summary(session, key, values)
        meta = get_meta(session, META) or {}
        meta.update(summary)
        meta["last_pull"] = datetime.now(UTC).isoformat(timespec="seconds")
        set_meta(session, META, meta)
    learner = _retrain(ws) if retrain and touched else "not retrained (no new answers)"
    return PullResult(
        key,
        new,
        updated,
        summary["invalid"],
        summary["problems"],
        summary["features_labeled"],
        summary["kappa"],
        learner,
        deleted,
    )


def _when(row: Annotation) -> tuple[datetime, int]:
    """Sort key: last change (naive UTC, as SQLite returns it), then id."""
    return (_naive_utc(row.updated_at) or datetime(1970, 1, 1), row.annotation_id)


def _adjudicate(session: Session, key: str, touched: set[tuple[str, int]]) -> None:
    """Each touched feature's human label follows its valid latest answers in Label Studio: one
    accepted Explanation of this project, updated when the answers change, withdrawn when none
    is left valid (all invalid, skipped or deleted); the label it updates is the one
    storage.human_labels picks (the latest of this project)."""
    for sae_id, feature in sorted(touched):
        rows = session.exec(
            select(Annotation).where(
                Annotation.project == key,
                Annotation.sae_id == sae_id,
                Annotation.feature == feature,
                Annotation.valid,
            )
        ).all()
        latest: dict[str, Annotation] = {}
        for row in sorted(rows, key=_when):
            latest[row.annotator] = row
        mine = human_labels(session, sae_id, features=[feature], status=None, project=key)
        existing = mine.get(feature)
        if not latest:
            # no valid answer left: the feature is unlabeled again (its old label withdrawn)
            if existing is not None and existing.status == "accepted":
                existing.status = WITHDRAWN
                existing.details = {
                    **(existing.details or {}),
                    "reason": "no valid answer left in Label Studio",
                    "withdrawn_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                session.add(existing)
            continue
        answers = [
            Answer(
                a.annotator,
                list(a.concepts),
                float(a.confidence or 0),
                a.explanation,
                _when(a)[0].timestamp(),
            )
            for a in latest.values()
        ]
        result = adjudicate(answers)
        label = existing or Explanation(
            sae_id=sae_id, feature=feature, source="human", status="accepted", concepts=[]
        )
        label.status = "accepted"
        label.created_at = datetime.now(UTC)  # the latest decision: human_labels' tie rule
        label.concepts = result.concepts
        label.text = result.explanation
        label.confidence = result.confidence / MAX_RATING
        label.author = ", ".join(result.annotators)
        label.model_version = key
        label.details = {
            "rule": ADJUDICATION_RULE,
            "reason": result.reason,
            "agreed": result.agreed,
            "annotation_ids": sorted(a.annotation_id for a in latest.values()),
        }
        session.add(label)


def _summary(session: Session, key: str, values: list[str]) -> dict[str, Any]:
    rows = session.exec(select(Annotation).where(Annotation.project == key)).all()
    invalid = [r for r in rows if not r.valid]
    per_feature: dict[int, dict[str, list[str]]] = {}
    for r in sorted(rows, key=_when):
        if r.valid:
            per_feature.setdefault(r.feature, {})[r.annotator] = r.concepts
    items = [[answers[a] for a in sorted(answers)] for answers in per_feature.values()]
    kappa = kappa_per_concept(items, values)
    cohen = [v["cohen"] for v in kappa.values() if v["cohen"] is not None]
    fleiss = [v["fleiss"] for v in kappa.values() if v["fleiss"] is not None]
    return {
        "annotations": len(rows),
        "invalid": len(invalid),
        "problems": [
            f"task {r.task_id} (annotation {r.annotation_id}): {r.problem}" for r in invalid
        ][:20],
        "features_labeled": len(per_feature),
        "overlap_items": sum(1 for i in items if len(i) >= 2),
        "kappa": kappa,
        "cohen_kappa_mean": round(sum(cohen) / len(cohen), 4) if cohen else None,
        "fleiss_kappa_mean": round(sum(fleiss) / len(fleiss), 4) if fleiss else None,
        "adjudication": ADJUDICATION_RULE,
    }


def _retrain(ws: Any) -> str:
    """Retrain the active learner on the human labels (skipped until that room exists)."""
    try:
        from active_learning.learner import retrain
    except ImportError:
        return "not retrained (active_learning not installed)"
    try:
        report = retrain(ws)
    except SafesailError as exc:
        return f"not retrained: {exc}"
    f1 = "-" if report.macro_f1_heldout is None else f"{report.macro_f1_heldout:.3f}"
    return f"retrained on {report.n_labels} labels, held-out macro-F1 {f1}"
