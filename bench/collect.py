"""Benchmark: activation collection against the bare model forward pass, on the same tokens.

One process, one set of token batches:

1. a real corpus (the packaged safety + benign corpus, sampled to ``--texts`` texts) goes into
   a fresh SQLite workspace in a temporary folder (a real database file, real storage);
2. SAEs with random weights and the demo shapes are saved in sae-lens format and registered
   (random weights cost exactly the compute of trained ones);
3. the chunk plan (which texts form each forward batch) comes from the library itself, on a
   scratch copy of the database, so the baseline runs exactly the batches collection runs;
4. ``safesail.collection.collect.collect`` is timed as a whole: tokenising contexts, forward, SAE encode,
   sparse conversion, packing, DB writes and finalize.

The bare forward is ``lm.residuals(batch, layers)`` over the same padded batches with the same
layers kept: the exact forward collection performs, nothing else (``--raw`` also times the
decoder truncated to the same depth without hooks, which is barer still).

Two designs (``--mode``):

* ``interleaved`` (default, robust on a shared machine): while collection runs, each chunk's
  bare forward is run and timed right next to collection's own forward of that chunk, before
  it on even chunks and after it on odd ones. Its time is excluded from the collection time
  (and from every step of the breakdown), so both see the same machine load within a second.
* ``sequential``: forward, collect, forward (``--repeats`` more pairs); fastest vs fastest.

Run: ``.venv/bin/python bench/collect.py [--texts N] [--saes demo|one] [--mode M] [--profile]``.
The last line is ``collect_over_forward=<ratio>`` (collection seconds / bare forward seconds).
The instrument (timers, the timing tree, the patches) is ``_collect_timing.py``; the corpus,
SAEs, workspace and baseline forwards are ``_collect_baselines.py``, both beside this script.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func
from sqlmodel import Session, select

from safesail.collection import collect as C
from safesail.config import DEFAULT_SAES, CollectConfig, SaeSpec
from safesail.db.tables import ActivationChunk, Context, Feature, get_meta

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _collect_baselines import (  # noqa: E402
    bare_forward,
    corpus_texts,
    fill_workspace,
    make_saes,
    raw_forward,
)
from _collect_timing import (  # noqa: E402
    Pairing,
    Phase,
    RssSampler,
    Tree,
    instrumented,
    load_sae_from_disk,
    maxrss_bytes,
    rss_bytes,
)

ONE_SAE = (SaeSpec(8, 2304, 32),)
# torch flags index_reduce_ and sparse CSR as beta on every call; that is not news here.
warnings.filterwarnings("ignore", message=".*is in beta.*")
warnings.filterwarnings("ignore", message=".*support is in beta state.*")


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


class Run:
    """One timed collection in its own fresh database."""

    def __init__(self, name: str, engine: Any, tree: Tree, pairing: Pairing | None) -> None:
        self.name, self.engine, self.tree, self.pairing = name, engine, tree, pairing
        self.phase: Phase
        self.done: list[str] = []

    @property
    def wall(self) -> float:  # collection only: paired bare forwards taken out
        return self.phase.wall - self.tree.excluded_wall

    @property
    def cpu(self) -> float:
        return self.phase.cpu - self.tree.excluded_cpu


def timed_collect(
    name: str,
    db: Path,
    setup: Callable[[Path], Any],
    lm: Any,
    config: CollectConfig,
    sampler: RssSampler,
    paired: bool,
) -> Run:
    tree = Tree()
    run = Run(name, setup(db), tree, Pairing(tree) if paired else None)
    with instrumented(tree, lm, run.pairing) as load, Phase(name, sampler) as phase:
        run.done = C.collect(run.engine, lm, load, config, progress=False)
    run.phase = phase
    return run


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1500, help="corpus texts (default 1500)")
    parser.add_argument("--saes", choices=("demo", "one"), default="demo")
    parser.add_argument("--mode", choices=("interleaved", "sequential"), default="interleaved")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed collections, each in a fresh database"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also time the decoder truncated to the same depth without hooks (reference)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, rerun collection in a fresh DB under cProfile and print hot functions",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary workspace (databases, SAEs) to rerun finalize on its chunks",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.texts < 1 or args.repeats < 1:
        parser.error("--texts and --repeats must be >= 1")
    config = CollectConfig()
    specs = DEFAULT_SAES if args.saes == "demo" else ONE_SAE
    sampler = RssSampler().start()
    started = time.perf_counter()

    from safesail.model.lm import load_model

    lm = load_model()
    print(
        f"model: {lm.name} ({lm.n_layers} layers, d={lm.hidden_size}), loaded in "
        f"{time.perf_counter() - started:.1f} s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus"
    )
    rows, source = corpus_texts(args.texts, args.seed)
    print(f"corpus: {len(rows)} texts from {source}")

    tmp = Path(tempfile.mkdtemp(prefix="safesail-bench-"))
    saes = make_saes(specs, lm.hidden_size, tmp / "saes")
    layers = sorted({s.layer for s in specs})
    print(
        f"SAEs: {', '.join(s.sae_id for s, _ in saes)} (sae-lens TopKSAE, random weights); "
        f"workspace {tmp} (SQLite)"
    )

    def setup(db: Path) -> Any:
        return fill_workspace(db, rows, lm, saes)

    # The plan collection will use, computed by the library itself on a scratch database.
    scratch = setup(tmp / "plan.db")
    C.prepare_contexts(scratch, lm, config.max_tokens)
    plan = C.chunk_plan(scratch, config.chunk_texts)
    with Session(scratch) as session:
        contexts = {c.text_id: c.token_ids for c in session.exec(select(Context))}
    scratch.dispose()
    batches = [[contexts[t] for t in chunk] for chunk in plan]
    n_tokens = sum(len(c) for c in contexts.values())
    padded = sum(len(b) * (max(len(r) for r in b) + 1) for b in batches)
    print(
        f"tokens: {n_tokens} real (<= {config.max_tokens}/text, mean {n_tokens / len(rows):.1f}), "
        f"{padded} fed with BOS + padding; {len(batches)} batches of <= {config.chunk_texts} "
        f"texts; layers kept {layers}; mode {args.mode}"
    )

    # Warm-up (untimed): short, middle and long batches, so allocator and threads are ready.
    bare_forward(lm, [batches[0], batches[len(batches) // 2], batches[-1]], layers)
    rss_ready = rss_bytes()

    runs: list[Run] = []
    forwards: list[Phase] = []
    table: list[tuple[str, float, float, str, str]] = []

    def row(name: str, wall: float, cpu: float, p: Phase | None) -> None:
        load = f"{p.others:.2f}" if p else ""
        mem = f"{mib(p.rss_peak)} (+{mib(p.rss_peak - p.rss_start)})" if p else ""
        table.append((name, wall, cpu, load, mem))

    for i in range(args.repeats):
        if args.mode == "sequential":
            with Phase(f"forward {i + 1}", sampler) as fwd:
                bare_forward(lm, batches, layers)
            forwards.append(fwd)
            row(fwd.name, fwd.wall, fwd.cpu, fwd)
        run = timed_collect(
            f"collect {i + 1}",
            tmp / f"bench{i + 1}.db",
            setup,
            lm,
            config,
            sampler,
            args.mode == "interleaved",
        )
        runs.append(run)
        if run.pairing:
            row(f"{run.name}() whole", run.phase.wall, run.phase.cpu, run.phase)
            row("  paired bare fwd", sum(run.pairing.bare), run.tree.excluded_cpu, None)
            row("  collection", run.wall, run.cpu, None)
        else:
            row(run.name, run.wall, run.cpu, run.phase)
    if args.mode == "sequential":
        with Phase(f"forward {args.repeats + 1}", sampler) as fwd:
            bare_forward(lm, batches, layers)
        forwards.append(fwd)
        row(fwd.name, fwd.wall, fwd.cpu, fwd)
    if args.raw:
        with Phase("raw decoder", sampler) as raw:
            raw_forward(lm, batches, layers)
        row("raw decoder (ref)", raw.wall, raw.cpu, raw)
    sampler.stop()

    if args.mode == "interleaved":
        ratios = [r.wall / sum(r.pairing.bare) for r in runs]
        ratio = statistics.median(ratios)
        best = min(runs, key=lambda r: abs(r.wall / sum(r.pairing.bare) - ratio))
        fwd_wall, fwd_cpu = sum(best.pairing.bare), best.tree.excluded_cpu
    else:
        best = min(runs, key=lambda r: r.wall)
        fastest = min(forwards, key=lambda f: f.wall)
        fwd_wall, fwd_cpu = fastest.wall, fastest.cpu
        ratio = best.wall / fwd_wall

    # Same tokens, same batches: check what collection stored against the baseline's plan.
    with Session(best.engine) as session:
        stored_plan = get_meta(session, "chunk_plan")
        stored_tokens = session.exec(select(func.sum(ActivationChunk.n_tokens))).one()
        n_features = session.exec(select(func.count()).select_from(Feature)).one()
    db_size = sum(p.stat().st_size for p in tmp.glob(f"bench{runs.index(best) + 1}.db*"))
    same = stored_plan == plan and stored_tokens == n_tokens * len(best.done)
    print(
        f"collected: {len(best.done)} SAEs, {n_features} feature rows, DB {db_size / 2**20:.1f} MiB; "
        f"same batches as the baseline: {'yes' if same else 'NO'} (plan equal: "
        f"{stored_plan == plan}; stored tokens {stored_tokens} = {n_tokens} x {len(best.done)})"
    )

    print()
    print(
        f"{'phase (run order)':<24}{'wall s':>8}{'cpu s':>8}{'tokens/s':>10}{'others':>8}  peak RSS"
    )
    for name, wall, cpu, load, mem in table:
        print(f"{name:<24}{wall:8.2f}{cpu:8.2f}{n_tokens / wall:10.0f}{load:>8}  {mem}")
    print(
        "  others: cores kept busy by other processes meanwhile (/proc/stat), i.e. the noise.\n"
        "  peak RSS: resident memory sampled every 20 ms from /proc/self/statm during the phase "
        "(counts torch and numpy buffers, which tracemalloc would miss), (+ rise over its start)."
    )
    print(
        f"memory: RSS {mib(rss_ready)} after model load + warm-up; process peak (ru_maxrss) "
        f"{mib(maxrss_bytes())}; collection's peak rises at most "
        f"{mib(max(r.phase.rss_peak - r.phase.rss_start for r in runs))} above its start"
    )
    print()
    how = (
        "sum of the per-chunk paired forwards"
        if args.mode == "interleaved"
        else f"fastest of {len(forwards)} sequential"
    )
    print(f"bare forward   {n_tokens / fwd_wall:7.0f} tokens/s  {fwd_wall:7.2f} s  ({how})")
    print(
        f"collection     {n_tokens / best.wall:7.0f} tokens/s  {best.wall:7.2f} s  "
        f"(collect() with {len(best.done)} SAEs, {best.name})"
    )
    print(
        f"collect / forward = {ratio:.3f} (by CPU seconds {best.cpu / fwd_cpu:.3f})"
        + (
            f"; per run {', '.join(f'{r:.3f}' for r in ratios)}"
            if len(runs) > 1 and args.mode == "interleaved"
            else ""
        )
        + "; goal <= 1.25"
    )
    if best.pairing:
        p = best.pairing
        for first, label in ((True, "bare before"), (False, "bare after")):
            inside = sum(t for t, f in zip(p.inside, p.bare_first, strict=True) if f is first)
            bare = sum(t for t, f in zip(p.bare, p.bare_first, strict=True) if f is first)
            if bare:
                print(
                    f"  order check, chunks with {label}: collection's own forward / bare forward "
                    f"= {inside:.2f} s / {bare:.2f} s = {inside / bare:.3f}"
                )

    print()
    print(
        f"where collection time goes ({best.name}, {best.wall:.2f} s = 100%"
        + ("; paired bare forwards excluded" if best.pairing else "")
        + "; self = not in a timed child):"
    )
    for line in best.tree.report(best.wall):
        print(line)
    forward_in = sum(v for p, v in best.tree.incl.items() if p[-1].startswith("lm.residuals"))
    rest = best.wall - forward_in
    print(
        f"  -> collection's own forward {forward_in:.2f} s; everything else {rest:.2f} s "
        f"= {100 * rest / fwd_wall:.0f}% of a bare forward ({fwd_wall:.2f} s); the goal allows 25%"
    )

    if args.profile:
        print()
        print(
            "cProfile of one more collection (fresh DB; the profiler inflates Python-heavy code):"
        )
        engine = setup(tmp / "profile.db")
        profiler = cProfile.Profile()
        profiler.enable()
        C.collect(engine, lm, load_sae_from_disk, config, progress=False)
        profiler.disable()
        engine.dispose()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(30)
        print("\n".join(line for line in out.getvalue().splitlines()[3:] if line.strip()))

    for run in runs:
        run.engine.dispose()
    if args.keep:
        print(f"workspace kept: {tmp} (bench<N>.db, saes/)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    print(f"collect_over_forward={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
