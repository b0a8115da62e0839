"""Time to push 10,000 feature tasks to a real Label Studio, batched (goal < 60 s).

Starts the room's managed server in a temporary workspace (its first start, 60-100 s, is not
timed), builds synthetic features' tasks with the same heatmap HTML as real ones, then times
`import_tasks`: the batched HTTP imports plus the LabelTask rows committed with each batch.

    .venv/bin/python bench/labelstudio_push.py [--n 10000] [--import-batch 1000]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from annotation import server
from annotation.project import ensure_project
from annotation.push import import_tasks
from annotation.tasks import _block, heatmap_html, task_key
from annotation.transport import ClientConfig, open_client
from safesail.config import WorkspaceConfig, default_cache_dir
from safesail.db.tables import LabelTask, SaeRecord, session_scope
from safesail.workspace import Workspace

SAE = "synthetic-L8-w16384"


def synthetic_tasks(n: int, seed: int = 0) -> list[dict]:
    """n tasks shaped like real ones: 5 top + 3 low contexts of 33 tokens each."""
    rng = np.random.default_rng(seed)
    words = [f" w{i}" for i in range(500)] + [" <b>", " &", ' "q"']
    tasks = []
    for f in range(n):
        rows = []
        for _ in range(8):
            tokens = [str(w) for w in rng.choice(words, 33)]
            acts = np.maximum(rng.normal(0, 2, 33), 0).tolist()
            rows.append(heatmap_html(tokens, acts, 6.0))
        html = _block("Top-activating contexts", rows[:5]) + _block("Low", rows[5:])
        tasks.append(
            {
                "data": {
                    "safesail_key": task_key(SAE, f),
                    "sae_id": SAE,
                    "feature": f,
                    "layer": 8,
                    "summary": "synthetic",
                    "html": html,
                    "annotators_wanted": 1,
                },
                "predictions": [],
            }
        )
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--import-batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ls-bench-") as tmp:
        workspace = Path(tmp) / "ws"
        ws = Workspace(WorkspaceConfig(workspace))
        with session_scope(ws.engine) as session:
            session.add(SaeRecord(id=SAE, source="disk", path="-", layer=8, d_in=576,
                                  d_sae=args.n, architecture="topk", selected=True))  # fmt: skip
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        t0 = time.perf_counter()
        server.up(workspace, default_cache_dir(), server.ServerConfig(port=port))
        print(f"server start (not timed): {time.perf_counter() - t0:.1f} s")
        try:
            client = open_client(ws, ClientConfig(import_batch=args.import_batch, timeout=300))
            project_id, key = ensure_project(ws, client)
            tasks = synthetic_tasks(args.n)
            size = sum(len(t["data"]["html"]) for t in tasks) / 1e6
            print(f"{len(tasks)} tasks, {size:.1f} MB of task HTML, batches of {args.import_batch}")
            t0 = time.perf_counter()
            pushed = import_tasks(ws, client, project_id, key, tasks, batch=1)
            seconds = time.perf_counter() - t0
            from sqlmodel import Session, func, select

            with Session(ws.engine) as session:
                rows = session.exec(select(func.count()).select_from(LabelTask)).one()
            assert pushed == rows == args.n, (pushed, rows)
            print(f"{pushed / seconds:.0f} tasks/s")
        finally:
            ws.engine.dispose()
            server.down(workspace)
    print(f"push_{args.n // 1000}k_seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
