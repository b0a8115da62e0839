"""What the benchmarks read against the reference set share (bench/explainer.py,
bench/delphi_peer.py, bench/cascade.py, bench/label_efficiency.py): the `--workspace` and
`--reference` flags, a clean copy of the demo database, and one seeded draw of gold and routed
features from the reference set, so that the explainer benchmarks explain the same features
for the same `--gold` / routed sizes."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from sqlmodel import Session, delete

from safesail.config import WorkspaceConfig
from safesail.db.tables import Explanation, LlmCall, Score
from safesail.reference.labels import ReferenceSet
from safesail.workspace import Workspace


def add_source_args(
    parser: argparse.ArgumentParser, workspace_help: str, reference_default: Path | None = None
) -> None:
    """`--workspace` ($SAFESAIL_WORKSPACE, else ./workspace, as the CLI) and `--reference`
    (None: the reference set of the workspace's selected SAE), declared once so the benchmarks
    cannot drift apart in how they find their inputs."""
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace")),
        help=workspace_help,
    )
    shown = "bench/reference/" if reference_default is None else reference_default.name
    parser.add_argument(
        "--reference",
        type=Path,
        default=reference_default,
        help=f"reference set (default: {shown})",
    )


def copy_db(source: Path, target: Path) -> Workspace:
    """A copy of the database without any earlier LLM call, explanation or score (nothing is
    served from an earlier run's cache); a write-ahead log beside it is copied too, or rows not
    yet checkpointed into the file would be missing."""
    target.mkdir(parents=True)
    shutil.copy(source / "safesail.db", target / "safesail.db")
    if (source / "safesail.db-wal").exists():
        shutil.copy(source / "safesail.db-wal", target / "safesail.db-wal")
    ws = Workspace(WorkspaceConfig(target))
    with Session(ws.engine) as session:
        for table in (LlmCall, Score, Explanation):
            session.exec(delete(table))
        session.commit()
    return ws


def draw(
    ref: ReferenceSet, n_gold: int, n_routed: int
) -> tuple[list[int], list[int], dict[int, tuple[list[str], str]]]:
    """(gold, routed, given): seed 0, the dev half permuted first (the first n_gold are gold),
    then the test half (the first n_routed are routed); given = each gold feature's reader
    labels and reason, as `seed_gold` takes them."""
    rng = np.random.default_rng(0)
    dev = sorted(r.feature for r in ref.half("dev"))
    test = sorted(r.feature for r in ref.half("test"))
    gold = [int(f) for f in rng.permutation(dev)[:n_gold]]
    routed = [int(f) for f in rng.permutation(test)[:n_routed]]
    given = {f: (list(ref.labels[f].labels), ref.labels[f].reason) for f in gold}
    return gold, routed, given
