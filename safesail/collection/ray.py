"""Collection sharded over a Ray cluster: `safesail collect --ray auto|ADDRESS`.

The driver (this process) tokenises the corpus and fixes the chunk plan as a plain collection
does; then each Ray actor loads the model and the SAEs once (a GPU each where the cluster has
GPUs) and is handed chunks one at a time, whichever actor is free taking the next. An actor
encodes a chunk and stores it in the shared database itself, in the same transaction a plain
collection uses (`safesail.collection.collect.encode_and_store`: rows keyed by (SAE, chunk)), so a worker
that dies loses at most its chunk in flight, and a rerun encodes exactly the chunks that are
missing. Finalize then runs here, once, over the stored chunks.

The workers need the database: a SQLite file works on one machine (a local cluster); a
cluster of several machines needs a server every node reaches (PostgreSQL). Ray is an optional
extra (`pip install 'safesail[ray]'`) and is imported only when a run uses it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesail.db.queries import require_saes
from safesail.errors import SafesailError

if TYPE_CHECKING:
    import torch
    from sqlalchemy.engine import Engine

    from safesail.collection.collect import ChunkWork
    from safesail.config import CollectConfig
    from safesail.db.tables import SaeRecord
    from safesail.model.lm import LanguageModel
    from safesail.workspace import Workspace  # the concrete one: the driver tokenises with its lm

LOCAL = "auto"
"""The address that starts a private local cluster on 127.0.0.1 for one run."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a sharded collection runs."""

    address: str = LOCAL
    """`auto`: start a local Ray cluster on 127.0.0.1 for this run; otherwise the address of a
    running cluster (`HOST:6379` from `ray start --head`, or `ray://HOST:10001`)."""
    workers: int | None = None
    """Collection workers, each holding its own model and SAEs (default: one per GPU of the
    cluster, else one per `--ray-cpus` CPUs)."""
    cpus: int = 1
    """CPUs (torch threads) per worker."""

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ValueError("the Ray address is empty: give `auto` or HOST:PORT")
        if self.workers is not None and self.workers < 1:
            raise ValueError("the number of Ray workers must be >= 1")
        if self.cpus < 1:
            raise ValueError("CPUs per Ray worker must be >= 1")


@dataclass(frozen=True)
class WorkerInfo:
    """Where one worker runs (its process id lets an operator, or a test, find it)."""

    pid: int
    node: str
    gpus: tuple[str, ...]


@dataclass
class RunReport:
    """What a sharded run did: its workers, their start-up time and the encoding throughput."""

    workers: list[WorkerInfo] = field(default_factory=list)
    startup_s: float = 0.0
    """From asking for the workers to all of them holding their model and SAEs."""
    encode_s: float = 0.0
    """From the first chunk handed out to the last one stored."""
    tokens: int = 0
    chunks: int = 0
    per_worker: dict[int, int] = field(default_factory=dict)
    """Chunks stored by each worker (by process id)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.encode_s if self.encode_s else 0.0


class ChunkWorker:
    """One Ray actor: the model and the SAEs, loaded once, and its own database connection."""

    def __init__(
        self,
        db_url: str,
        load_lm: Callable[[], LanguageModel],
        load: Callable[[SaeRecord], torch.nn.Module],
        records: Sequence[SaeRecord],
        threads: int,
    ) -> None:
        import torch

        from safesail.db.tables import open_db

        torch.set_num_threads(threads)
        self.engine = open_db(db_url)
        self.lm = load_lm()
        self.saes = {r.id: (r, load(r)) for r in records}

    def info(self) -> WorkerInfo:
        import ray

        context = ray.get_runtime_context()
        return WorkerInfo(os.getpid(), context.get_node_id(), tuple(map(str, ray.get_gpu_ids())))

    def run(self, work: ChunkWork) -> tuple[int, int]:
        """Encode and store one chunk; (this worker's pid, the chunk's tokens)."""
        from safesail.collection.collect import encode_and_store

        return os.getpid(), encode_and_store(self.engine, self.lm, self.saes, work)


def _worker_url(engine: Engine) -> str:
    """The URL the workers open: the driver's, with a SQLite path made absolute (a worker's
    working directory is not the driver's); an in-memory database cannot be shared."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SafesailError("an in-memory SQLite database cannot be shared with Ray workers — use a workspace "
                "file or --db-url")
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=False)


@dataclass
class RayRunner:
    """Runs the chunk plan on a Ray cluster (a `safesail.collection.collect.ChunkRunner`).

    `load_lm` and `load` are sent to every worker (they must pickle: module functions or a
    `functools.partial` of them); the database URL comes from the driver's engine."""

    config: RayConfig
    load_lm: Callable[[], LanguageModel]
    load: Callable[[SaeRecord], torch.nn.Module]
    report: RunReport = field(default_factory=RunReport)

    def run(
        self,
        engine: Engine,
        records: Sequence[SaeRecord],
        work: Sequence[ChunkWork],
        progress: bool,
    ) -> None:
        import ray
        from tqdm.auto import tqdm

        url = _worker_url(engine)
        started = _connect(self.config)
        actors: list[Any] = []
        try:
            n, gpus = _plan_workers(self.config, len(work), sqlite=url.startswith("sqlite"))
            remote = ray.remote(ChunkWorker).options(num_cpus=self.config.cpus, num_gpus=gpus)
            clock = time.perf_counter()
            actors = [
                remote.remote(url, self.load_lm, self.load, list(records), self.config.cpus)
                for _ in range(n)
            ]
            self.report.workers = _gather(ray, [a.info.remote() for a in actors], "start")
            self.report.startup_s = time.perf_counter() - clock
            clock = time.perf_counter()
            total = sum(w.n_tokens for w in work)
            with tqdm(
                total=total,
                desc=f"Collecting activations on {n} Ray worker(s)",
                unit="tok",
                unit_scale=True,
                disable=not progress,
            ) as bar:
                for tokens in _results(ray, actors, work, self.report):
                    bar.update(tokens)
            self.report.encode_s = time.perf_counter() - clock
        finally:
            # idle after a failure; on an interrupt, a chunk in flight is lost whole
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()


def _connect(config: RayConfig) -> bool:
    """Connect to the cluster (True: this run started the connection and ends it). A caller's
    own connection (a notebook, the tests' shared cluster) is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if config.address == LOCAL:
            cpus = config.workers * config.cpus if config.workers else os.cpu_count() or 1
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=config.address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise SafesailError(
            f"cannot reach the Ray cluster at '{config.address}': {_first_line(str(exc))} — "
            "check --ray ADDRESS, or use --ray auto for a local one"
        ) from None
    return True


def _plan_workers(config: RayConfig, chunks: int, *, sqlite: bool) -> tuple[int, int]:
    """(workers, GPUs per worker) the cluster can hold; more than it has is a one-line error
    (they would wait for resources forever)."""
    import ray

    have = ray.cluster_resources()
    cpus, gpus = int(have.get("CPU", 0)), int(have.get("GPU", 0))
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if sqlite and nodes > 1:
        raise SafesailError(
            f"the Ray cluster has {nodes} nodes but the database is a SQLite file on this one — "
            "give a --db-url every node reaches (postgresql+psycopg://...)"
        )
    per_gpu = 1 if gpus else 0
    n = config.workers or (gpus if gpus else max(1, cpus // config.cpus))
    n = min(n, chunks)
    if n * config.cpus > cpus or n * per_gpu > gpus:
        raise SafesailError(
            f"the Ray cluster has {cpus} CPUs and {gpus} GPUs; {n} workers need "
            f"{n * config.cpus} CPUs and {n * per_gpu} GPUs — lower --ray-workers or --ray-cpus"
        )
    return n, per_gpu


def _gather(ray: Any, refs: list[Any], what: str) -> list[Any]:
    try:
        return ray.get(refs)
    except Exception as exc:
        raise _one_line(ray, exc, what) from None


def _results(ray: Any, actors: list[Any], work: Sequence[ChunkWork], report: RunReport):
    """Each stored chunk's token count, as the workers finish them: a free worker takes the next
    chunk. After a failure no chunk is handed out and the chunks in flight are waited for (they
    are stored whole), so that nothing is written after the run ends; then a one-line error
    says how to resume."""
    queue = deque(work)
    idle = list(actors)
    running: dict[Any, Any] = {}
    failure: BaseException | None = None
    while running or (queue and failure is None):
        while idle and queue and failure is None:
            actor = idle.pop()
            running[actor.run.remote(queue.popleft())] = actor
        [ref], _ = ray.wait(list(running), num_returns=1)
        actor = running.pop(ref)
        try:
            pid, tokens = ray.get(ref)
        except Exception as exc:
            failure = failure or exc
            continue
        idle.append(actor)
        report.chunks += 1
        report.per_worker[pid] = report.per_worker.get(pid, 0) + 1
        report.tokens += tokens
        yield tokens
    if failure is not None:
        raise _one_line(ray, failure, "run", report.chunks, len(work))


def _one_line(ray: Any, exc: BaseException, what: str, done: int = 0, total: int = 0) -> Exception:
    """A worker's failure as the one line the CLI prints: its own SafesailError as it is,
    a worker that died (killed, out of memory, node lost) with how to resume."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SafesailError):
        return SafesailError(str(cause))
    resume = "; rerun the same command to resume" + (
        f" ({done} of {total} chunks of this run are stored)" if total else ""
    )
    if isinstance(exc, ray.exceptions.RayActorError):
        reason = _first_line(getattr(exc, "error_msg", "") or str(exc))
        return SafesailError(f"a Ray collection worker died during {what} ({reason}){resume}")
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        return SafesailError(
            f"a Ray collection worker failed during {what}: {type(cause).__name__}: "
            f"{_first_line(str(cause))}{resume}"
        )
    return SafesailError(
        f"the Ray collection failed during {what}: {_first_line(str(exc))}{resume}"
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no reason given"


def collect_on_ray(
    ws: Workspace,
    config: CollectConfig | None = None,
    ray_config: RayConfig | None = None,
    *,
    sae_ids: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[list[str], RunReport]:
    """`Workspace.collect` with the chunks encoded on a Ray cluster; same result, resumable the
    same way (a plain `collect` may finish what a sharded one started, and the reverse)."""
    from functools import partial

    from safesail.collection.collect import collect
    from safesail.model.lm import load_model
    from safesail.model.saes import load_sae

    try:
        import ray  # noqa: F401 - the extra this needs
    except ImportError:
        raise SafesailError("--ray needs Ray, which is not installed — pip install 'safesail[ray]'") from None
    require_saes(ws.engine)
    runner = RayRunner(
        ray_config or RayConfig(),
        partial(load_model, ws.model_name, ws.config.cache_dir),
        load_sae,
    )
    done = collect(
        ws.engine, ws.lm, load_sae, config, sae_ids=sae_ids, progress=progress, runner=runner
    )
    return done, runner.report
