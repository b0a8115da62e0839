"""Collection sharded over a real local Ray cluster (127.0.0.1, two worker processes).

Two workers give exactly the feature rows one process gives; a worker killed mid-run (SIGKILL,
as the OOM killer would) loses only its chunk in flight, and rerunning the same command encodes
exactly the missing chunks. One cluster serves the whole file (a Ray start costs seconds).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func
from sqlmodel import Session, select

from safesail.cli.main import main
from safesail.collection.collect import collect
from safesail.collection.ray import RayConfig, RayRunner, _connect, collect_on_ray
from safesail.db.tables import ActivationChunk, Feature, SaeRecord, get_meta, session_scope
from safesail.errors import SafesailError
from safesail.features.examples import examples_of
from safesail.model.lm import load_model
from safesail.model.saes import load_sae
from tests.conftest import TINY_COLLECT, TINY_SPECS, copy_workspace, skip_or_fail

TWO = RayConfig(workers=2)


@pytest.fixture(scope="module")
def ray_cluster():
    """The local cluster `--ray auto` starts (2 CPUs on 127.0.0.1), shared by the file."""
    try:
        import ray
    except ImportError:
        skip_or_fail("Ray is not installed (pip install 'safesail[ray]')")
    assert _connect(TWO)  # the same start `--ray auto` makes
    assert ray.cluster_resources()["CPU"] == 2
    yield ray
    ray.shutdown()


def _uncollected(trained_ws, path, lm):
    """A copy of the tiny workspace with its chunks and features gone (plan and contexts kept)."""
    ws = copy_workspace(trained_ws, path, lm)
    with session_scope(ws.engine) as session:
        session.exec(delete(ActivationChunk))
        session.exec(delete(Feature))
        for record in session.exec(select(SaeRecord)):
            record.collected = False
            session.add(record)
    return ws


def _features(ws) -> dict[tuple[str, int], dict]:
    with Session(ws.engine) as session:
        return {(f.sae_id, f.index): f.model_dump() for f in session.exec(select(Feature))}


def _close(a: object, b: object) -> bool:
    """Equal, floats to float32 rounding (nested in dicts and lists too)."""
    if isinstance(a, float) and isinstance(b, float):
        return b == pytest.approx(a, rel=1e-5, abs=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _assert_same_rows(got: dict, expected: dict) -> None:
    """The same feature rows up to float32 rounding: a Ray worker's torch runs on one thread
    and this process on two, and on some CPUs their float32 sums round apart in the last bits.
    Counts, ids, the contexts kept and every decision stay exact."""
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        other = got[key]
        for field, value in row.items():
            if field == "examples":
                # the top contexts exactly; the decile samples' sizes (a value on a decile's
                # edge may fall into the next one when it rounds apart)
                mine, theirs = examples_of(value), examples_of(other[field])
                assert len(mine) == len(theirs)
                top = {e.text_id: e.activations for e in mine if e.kind == 0}
                other_top = {e.text_id: e.activations for e in theirs if e.kind == 0}
                assert top.keys() == other_top.keys()  # equal peaks may swap places
                for text_id, acts in top.items():
                    np.testing.assert_allclose(acts, other_top[text_id], rtol=1e-5, atol=1e-6)
            else:
                assert _close(value, other[field]), (key, field, value, other[field])


def _chunks(ws) -> tuple[int, int]:
    """(rows, distinct chunk indices) stored."""
    with Session(ws.engine) as session:
        rows = session.exec(select(func.count()).select_from(ActivationChunk)).one()
        chunks = session.exec(select(func.count(func.distinct(ActivationChunk.chunk)))).one()
    return rows, chunks


def _n_chunks(ws) -> int:
    with Session(ws.engine) as session:
        return len(get_meta(session, "chunk_plan"))


def test_two_workers_give_the_rows_of_one_process(trained_ws, tmp_path, lm, ray_cluster):
    ws = _uncollected(trained_ws, tmp_path / "ws", lm)
    done, report = collect_on_ray(ws, TINY_COLLECT, TWO, progress=False)
    assert sorted(done) == sorted(s.sae_id for s in TINY_SPECS)
    pids = {w.pid for w in report.workers}
    assert len(pids) == 2 and os.getpid() not in pids  # two processes other than this one
    assert set(report.per_worker) == pids  # both took chunks
    assert report.chunks == sum(report.per_worker.values()) == _n_chunks(ws)
    assert _chunks(ws) == (_n_chunks(ws) * len(TINY_SPECS), _n_chunks(ws))
    expected = _features(trained_ws)
    assert len(expected) == sum(s.d_sae for s in TINY_SPECS)
    _assert_same_rows(_features(ws), expected)


def test_a_killed_worker_then_a_rerun_counts_no_chunk_twice(trained_ws, tmp_path, lm, ray_cluster):
    ws = _uncollected(trained_ws, tmp_path / "ws", lm)
    total = _n_chunks(ws)
    runner = RayRunner(TWO, partial(load_model, ws.model_name, ws.config.cache_dir), load_sae)
    failure: list[BaseException] = []

    def first_run() -> None:
        try:
            collect(ws.engine, ws.lm, load_sae, TINY_COLLECT, progress=False, runner=runner)
        except BaseException as exc:  # the test reads it below
            failure.append(exc)

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + 300
    while _chunks(ws)[1] < 2 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert runner.report.workers, "the workers never started"
    os.kill(runner.report.workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert len(failure) == 1 and isinstance(failure[0], SafesailError), failure
    assert "worker died" in str(failure[0]) and "rerun the same command" in str(failure[0])
    rows, stored = _chunks(ws)
    assert 2 <= stored < total, "the kill came after the run had finished"
    assert rows == stored * len(TINY_SPECS)  # each chunk whole for every SAE, or not at all
    with Session(ws.engine) as session:
        assert not session.exec(select(Feature)).first()  # finalize never ran
    done, report = collect_on_ray(ws, TINY_COLLECT, TWO, progress=False)  # the same command
    assert sorted(done) == sorted(s.sae_id for s in TINY_SPECS)
    assert report.chunks == total - stored  # only the missing chunks were encoded
    assert _chunks(ws) == (total * len(TINY_SPECS), total)
    _assert_same_rows(_features(ws), _features(trained_ws))


def test_bad_ray_requests_are_one_line_errors(trained_ws, tmp_path, lm, ray_cluster, capsys):
    ws = _uncollected(trained_ws, tmp_path / "ws", lm)
    with pytest.raises(SafesailError, match="has 2 CPUs and 0 GPUs; 3 workers need 3 CPUs"):
        collect_on_ray(ws, TINY_COLLECT, RayConfig(workers=3), progress=False)
    path = str(ws.config.workspace)
    assert main(["collect", "--workspace", path, "--ray-workers", "3"]) == 2  # Ray, not ignored
    last = capsys.readouterr().err.splitlines()[-1]  # after the model's load bar
    assert last.startswith("safesail: error: the Ray cluster has 2 CPUs and 0 GPUs; 3 workers")
    assert main(["collect", "--workspace", path, "--ray", "auto", "--ray-cpus", "0"]) == 2
    assert "CPUs per Ray worker must be >= 1" in capsys.readouterr().err


def _registered(trained_ws, path, lm, db_url=None):
    """A new workspace (on db_url) with the tiny corpus and trained_ws's SAE folders, nothing
    collected: the state `safesail collect` starts from."""
    from tests.conftest import make_workspace, tiny_records

    ws = make_workspace(path, lm, db_url)
    ws.add_corpus(tiny_records())
    for record in trained_ws.saes():
        ws.add_sae(Path(record.path), sae_id=record.id)
    ws.engine.dispose()  # the command opens its own
    return ws


def test_cli_collect_on_ray_into_postgres_gives_the_rows_of_a_local_run(
    trained_ws, tmp_path, lm, ray_cluster, pg_url, monkeypatch, capsys
):
    """The user's path end to end: `safesail collect --ray auto` with the database on a real
    PostgreSQL server (the URL through $SAFESAIL_DB_URL), against plain `safesail collect` into
    SQLite with the same flags; the same feature rows, and a rerun encodes nothing."""
    flags = ["--top-k", "5", "--per-decile", "1"]
    local = _registered(trained_ws, tmp_path / "local", lm)
    assert main(["collect", "--workspace", str(local.config.workspace), *flags]) == 0
    shared = _registered(trained_ws, tmp_path / "shared", lm, pg_url)
    monkeypatch.setenv("SAFESAIL_DB_URL", pg_url)
    path = str(shared.config.workspace)
    capsys.readouterr()
    assert main(["collect", "--workspace", path, "--ray", "auto", *flags]) == 0
    out = capsys.readouterr().out
    assert f"collected {len(TINY_SPECS)} SAE(s)" in out
    assert shared.engine.dialect.name == "postgresql"
    assert _chunks(shared)[1] == _n_chunks(shared) > 1
    expected = _features(local)
    assert len(expected) == sum(s.d_sae for s in TINY_SPECS)
    _assert_same_rows(_features(shared), expected)
    assert main(["collect", "--workspace", path, "--ray", "auto", *flags]) == 0
    assert "all already collected" in capsys.readouterr().out
