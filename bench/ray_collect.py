"""Benchmark: sharded collection (`safesail collect --ray`) with 1 and 2 Ray workers.

One local Ray cluster on 127.0.0.1 with 2 CPUs. The same workspace (real corpus texts, or
generated English if the packaged corpus is unavailable; random-weight TopK SAEs of the demo
shapes in sae-lens format, a real SQLite file) is copied once per run, so both runs encode the
same chunk plan from scratch. Each worker holds its own model and SAEs and runs one torch
thread (`--ray-cpus 1`), writing its chunks to the shared SQLite file itself.

Throughput is tokens encoded and stored per second from the first chunk handed out to the last
one stored; the workers' start-up (imports, model and SAE load) is reported apart, and finalize
(which runs once in the driver either way) is left out. The machine's load average is printed
beside the figures: on a shared 2-core machine other jobs take the second core, and the ratio
shows it.

Run: ``.venv/bin/python bench/ray_collect.py [--texts N] [--chunk-texts N]``.
The last line is ``ray_2_over_1=<ratio>`` (2-worker tokens/s over 1-worker tokens/s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from safesail.collection.collect import collect
from safesail.collection.plan import chunk_plan, prepare_contexts
from safesail.collection.ray import RayConfig, RayRunner, RunReport, _connect
from safesail.config import EMBEDDED_MODEL, CollectConfig, SaeSpec, default_cache_dir
from safesail.db.tables import open_db
from safesail.model.lm import load_model
from safesail.model.saes import load_sae

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _collect_baselines import corpus_texts, fill_workspace, make_saes  # noqa: E402

SPECS = (SaeSpec(8, 2304, 32), SaeSpec(12, 2304, 32))


def run(base: Path, workers: int, config: CollectConfig, lm) -> RunReport:
    """One sharded collection on a fresh copy of the base workspace."""
    db = base.with_name(f"run{workers}.db")
    shutil.copy(base, db)
    engine = open_db(f"sqlite:///{db}")
    runner = RayRunner(
        RayConfig(workers=workers, cpus=1),
        partial(load_model, EMBEDDED_MODEL, default_cache_dir()),
        load_sae,
    )
    collect(engine, lm, load_sae, config, progress=False, runner=runner)
    engine.dispose()
    return runner.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="corpus texts")
    parser.add_argument("--chunk-texts", type=int, default=16, help="texts per chunk")
    args = parser.parse_args()
    started = time.perf_counter()
    config = CollectConfig(chunk_texts=args.chunk_texts)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        lm = load_model()
        rows, source = corpus_texts(args.texts, seed=0)
        saes = make_saes(SPECS, lm.hidden_size, tmp / "saes")
        base = tmp / "base.db"
        engine = fill_workspace(base, rows, lm, saes)
        prepare_contexts(engine, lm, config.max_tokens)
        plan = chunk_plan(engine, config.chunk_texts)
        engine.dispose()
        print(
            f"corpus: {len(rows)} texts ({source}); {len(plan)} chunks; SAEs: "
            + ", ".join(s.sae_id for s in SPECS)
        )
        _connect(RayConfig(workers=2))  # one local cluster (2 CPUs, 127.0.0.1) for both runs
        reports = {}
        for workers in (1, 2):
            load = os.getloadavg()[0]
            report = run(base, workers, config, lm)
            reports[workers] = report
            print(
                f"{workers} worker(s): {report.tokens} tokens in {report.encode_s:.1f} s = "
                f"{report.tokens_per_s:.0f} tokens/s (start-up {report.startup_s:.1f} s; "
                f"chunks per worker {sorted(report.per_worker.values())}; "
                f"load average before {load:.1f} on {os.cpu_count()} cores)"
            )
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    print(f"ray_2_over_1={reports[2].tokens_per_s / reports[1].tokens_per_s:.3f}")


if __name__ == "__main__":
    main()
