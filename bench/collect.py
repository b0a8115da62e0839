"""Benchmark: activation collection against the bare model forward pass, on the same tokens.

One process, one set of token batches:

1. a real corpus (the packaged safety + benign corpus, sampled to ``--texts`` texts) goes into
   a fresh SQLite workspace in a temporary folder (a real database file, real storage);
2. SAEs with random weights and the demo shapes are saved in sae-lens format and registered
   (random weights cost exactly the compute of trained ones);
3. the chunk plan (which texts form each forward batch) comes from the library itself, on a
   scratch copy of the database, so the baseline runs exactly the batches collection runs;
4. ``safesail.collect.collect`` is timed as a whole: tokenising contexts, forward, SAE encode,
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
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import os
import pstats
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func
from sqlmodel import Session, select

from safesail import collect as C
from safesail.config import DEFAULT_SAES, CollectConfig, SaeSpec, default_cache_dir
from safesail.storage import (
    ActivationChunk,
    Context,
    CorpusText,
    Feature,
    SaeRecord,
    get_meta,
    open_db,
    session_scope,
)

ONE_SAE = (SaeSpec(8, 2304, 32),)
# torch flags index_reduce_ and sparse CSR as beta on every call; that is not news here.
warnings.filterwarnings("ignore", message=".*is in beta.*")
warnings.filterwarnings("ignore", message=".*support is in beta state.*")


# ----------------------------------------------------------------------------- measuring


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (first line of /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Peak resident memory of this process within a phase, sampled from /proc every 20 ms."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def reset(self) -> None:
        self.peak = _rss_bytes()

    def start(self) -> RssSampler:
        self.reset()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Phase:
    """Wall and CPU seconds plus sampled peak RSS of one timed block."""

    def __init__(self, name: str, sampler: RssSampler) -> None:
        self.name, self.sampler = name, sampler
        self.wall = self.cpu = 0.0
        self.rss_start = self.rss_peak = 0

    def __enter__(self) -> Phase:
        self.sampler.reset()
        self.rss_start = _rss_bytes()
        self._busy = _machine_busy_seconds()
        self._cpu, self._wall = _cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu
        # Cores used by other processes meanwhile: the noise this phase suffered.
        self.others = max(0.0, _machine_busy_seconds() - self._busy - self.cpu) / self.wall
        self.rss_peak = max(self.sampler.peak, _rss_bytes())


class Tree:
    """Inclusive wall time per call path; self time is what timed children do not account for."""

    def __init__(self) -> None:
        self.incl: dict[tuple[str, ...], float] = defaultdict(float)
        self.calls: dict[tuple[str, ...], int] = defaultdict(int)
        self.stack: list[list[Any]] = []  # [path, start, is_phase]
        self.excluded_wall = self.excluded_cpu = 0.0

    def begin(self, name: str, *, phase: bool = False) -> None:
        parent = self.stack[-1][0] if self.stack else ()
        self.stack.append([(*parent, name), time.perf_counter(), phase])

    def end(self) -> None:
        path, start, _ = self.stack.pop()
        self.incl[path] += time.perf_counter() - start
        self.calls[path] += 1

    def end_phase(self) -> None:
        if self.stack and self.stack[-1][2]:
            self.end()

    def top(self) -> tuple[str, ...]:
        return self.stack[-1][0] if self.stack else ()

    @contextlib.contextmanager
    def region(self, name: str) -> Iterator[None]:
        depth = len(self.stack)
        self.begin(name)
        try:
            yield
        finally:
            while len(self.stack) > depth:  # close phases a wrapped call left open
                self.end()

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Time that belongs to no step: every open step's clock is moved past it."""
        cpu, start = _cpu_seconds(), time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.excluded_wall += spent
            self.excluded_cpu += _cpu_seconds() - cpu
            for entry in self.stack:
                entry[1] += spent

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.region(name):
                return fn(*args, **kwargs)

        return timed

    def report(self, total: float) -> list[str]:
        seen = list(self.incl)  # in order of first completion
        order = sorted(seen, key=lambda p: [seen.index(p[:i]) for i in range(1, len(p) + 1)])
        lines = [f"  {'seconds':>8} {'% coll':>7} {'self s':>8} {'calls':>6}  step"]
        for path in order:
            children = sum(
                v for p, v in self.incl.items() if len(p) == len(path) + 1 and p[:-1] == path
            )
            inclusive = self.incl[path]
            lines.append(
                f"  {inclusive:8.2f} {100 * inclusive / total:6.1f}% {inclusive - children:8.2f} "
                f"{self.calls[path]:6d}  {'  ' * (len(path) - 1)}{path[-1]}"
            )
        return lines


class Pairing:
    """Per chunk: collection's own forward and the bare forward timed right next to it."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.bare: list[float] = []
        self.inside: list[float] = []
        self.bare_first: list[bool] = []

    def run(self, real: Callable[..., Any], batch: Any, layers: Any) -> Any:
        first = len(self.bare) % 2 == 0  # alternate the order: neither side warms the other
        if first:
            self._bare(real, batch, layers)
        start = time.perf_counter()
        out = real(batch, layers)
        self.inside.append(time.perf_counter() - start)
        if not first:
            self._bare(real, batch, layers)
        self.bare_first.append(first)
        return out

    def _bare(self, real: Callable[..., Any], batch: Any, layers: Any) -> None:
        with self.tree.excluded():
            start = time.perf_counter()
            real(batch, layers)  # the library's own method, not the timing wrapper
            self.bare.append(time.perf_counter() - start)


@contextlib.contextmanager
def instrumented(
    tree: Tree, lm: Any, pairing: Pairing | None = None
) -> Iterator[Callable[[SaeRecord], Any]]:
    """Wrap the functions collection calls (library untouched; patches undone on exit).

    Yields the SAE loader to pass to collect: it times loading and wraps every SAE's encode.
    Finalize has few sub-functions, so its sections are found from its two streams over the
    stored chunks: pass 1, the gap to pass 2 (choosing examples), pass 2, the gap to the final
    transaction (building rows), the write. Names that no longer exist are skipped with a note.
    """
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, label: str, fn: Callable[..., Any] | None = None) -> None:
        original = getattr(owner, name, None)
        if original is None:
            print(f"  (note: {name} not found, not timed)", file=sys.stderr)
            return
        patched.append((owner, name, original if owner is not lm else None))
        setattr(owner, name, tree.wrap(label, fn or original))

    patch(C, "collect", "collect()")
    patch(C, "prepare_contexts", "prepare_contexts (tokenize, decode, insert)")
    patch(lm, "tokenize", "lm.tokenize")
    patch(lm, "decode_tokens", "lm.decode_tokens")
    patch(C, "chunk_plan", "chunk_plan")
    patch(C, "encode_chunk", "encode_chunk")
    residuals = lm.residuals
    paired = functools.partial(pairing.run, residuals) if pairing else None
    patch(lm, "residuals", "lm.residuals (forward)", paired)
    patch(C, "_encode_topk_sparse", "SAE encode (matmul + top-k -> CSR)")
    patch(C, "_per_text_max", "per-text max")
    patch(C, "pack_csr", "pack_csr")
    patch(C, "pack_arrays", "pack_arrays (np.savez)")
    patch(C, "unpack_arrays", "unpack_arrays (np.load)")
    patch(C, "unpack_csr", "unpack_csr")
    patch(C, "pack_examples", "pack_examples")

    original_finalize = C.finalize

    @functools.wraps(original_finalize)
    def finalize(*args: Any, **kwargs: Any) -> Any:
        passes["n"] = 0
        with tree.region("finalize"):
            tree.begin("setup (read plan, concepts, lengths)", phase=True)
            return original_finalize(*args, **kwargs)

    patched.append((C, "finalize", original_finalize))
    C.finalize = finalize

    # Finalize streams the stored chunks twice (_stored_chunks): pass 1, then pass 2. The gaps
    # after each pass are sections of their own: choosing examples, then building rows.
    original_chunks = C._stored_chunks
    sections = [
        ("pass 1: stats, concepts, top-K", "choose examples"),
        ("pass 2: histograms, example activations", "build feature rows (quantiles, dicts, pack)"),
    ]
    passes = {"n": 0}

    def stored_chunks(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if "finalize" not in tree.top():
            yield from original_chunks(*args, **kwargs)
            return
        n = passes["n"] = passes["n"] + 1
        during, after = sections[n - 1] if n <= len(sections) else (f"pass {n}", f"after {n}")
        tree.end_phase()
        tree.begin(during, phase=True)
        it = iter(original_chunks(*args, **kwargs))
        while True:
            tree.begin("read chunk (DB select + unpack)")
            try:
                item = next(it)
            except StopIteration:
                tree.end()
                break
            tree.end()
            yield item
        tree.end_phase()
        tree.begin(after, phase=True)

    patched.append((C, "_stored_chunks", original_chunks))
    C._stored_chunks = stored_chunks

    original_scope = C.session_scope

    @contextlib.contextmanager
    def session_scope(engine: Any) -> Iterator[Any]:
        in_finalize = "finalize" in tree.top()
        if in_finalize:
            tree.end_phase()
        label = "write features (delete, bulk insert, commit)" if in_finalize else "DB transaction"
        with tree.region(label), original_scope(engine) as session:
            yield session

    patched.append((C, "session_scope", original_scope))
    C.session_scope = session_scope

    def load(record: SaeRecord) -> Any:
        with tree.region("load SAE from disk"):
            sae = load_sae_from_disk(record)
        sae.encode = tree.wrap("sae.encode (matmul + topk)", sae.encode)
        return sae

    try:
        yield load
    finally:
        for owner, name, original in reversed(patched):
            if original is None:  # instance attribute on lm: drop it, the method shows again
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def load_sae_from_disk(record: SaeRecord) -> Any:
    from safesail.saes import load_sae

    return load_sae(record)


# ----------------------------------------------------------------------------- inputs


def corpus_texts(n: int, seed: int) -> tuple[list[tuple[str, list[str]]], str]:
    """n real texts with their concepts: the packaged corpus, else generated English."""
    try:
        from safesail.corpus import build_default_corpus
        from safesail.taxonomy import Taxonomy

        records = build_default_corpus(
            default_cache_dir() / "corpus", Taxonomy.load(None), progress=False
        )
        rows = [(r.text, list(r.concepts)) for r in records]
        source = f"packaged safety+benign corpus ({len(rows)} texts, sampled)"
    except Exception as exc:  # any failure of a module under construction: fall back
        print(f"(packaged corpus unavailable: {exc!r}; using generated sentences)", file=sys.stderr)
        rows = generated_sentences(max(n, 1), seed)
        source = "generated English sentences (fallback)"
    rng = random.Random(seed)
    if len(rows) > n:
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
    return rows, source


def generated_sentences(n: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    subjects = ["the engineer", "a small dog", "my neighbour", "the committee", "an old river"]
    verbs = ["describes", "carries", "ignores", "repairs", "follows", "questions", "measures"]
    objects = ["the broken bridge", "a quiet morning", "every letter", "the northern road"]
    tails = ["before dawn", "with great care", "as in a story", "for the third time", ""]
    out = []
    for _ in range(n):
        parts = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects), rng.choice(tails)]
        sentence = " ".join(p for p in parts if p)
        out.append((sentence[0].upper() + sentence[1:] + ".", ["benign"]))
    return out


def make_saes(specs: tuple[SaeSpec, ...], d_in: int, folder: Path) -> list[tuple[SaeSpec, Path]]:
    """Random-weight TopK SAEs of the given shapes, saved in sae-lens format."""
    from sae_lens import TopKSAE, TopKSAEConfig

    out = []
    for i, spec in enumerate(specs):
        torch.manual_seed(i)
        sae = TopKSAE(
            TopKSAEConfig(d_in=d_in, d_sae=spec.d_sae, k=spec.k, dtype="float32", device="cpu")
        )
        sae.cfg.metadata.hook_name = f"blocks.{spec.layer}.hook_resid_post"
        path = folder / spec.sae_id
        sae.save_model(path)
        out.append((spec, path))
    return out


def fill_workspace(db: Path, rows: list[tuple[str, list[str]]], lm: Any, saes: list) -> Any:
    from safesail.saes import register_sae

    engine = open_db(f"sqlite:///{db}")
    with session_scope(engine) as session:
        for i, (text, concepts) in enumerate(rows, start=1):
            session.add(CorpusText(id=i, text=text, source="bench", license="-", concepts=concepts))
        for spec, path in saes:
            register_sae(session, lm, path, source="disk", sae_id=spec.sae_id)
    return engine


# ----------------------------------------------------------------------------- forward passes


def bare_forward(lm: Any, batches: list[list[list[int]]], layers: list[int]) -> None:
    """Exactly the forward of collection: lm.residuals over the same batches and layers."""
    for batch in batches:
        lm.residuals(batch, layers)


@torch.no_grad()
def raw_forward(lm: Any, batches: list[list[list[int]]], layers: list[int]) -> None:
    """Barer still: the decoder truncated to the deepest layer, no hooks, no gathering."""
    tensors = [lm.batch_inputs(batch) for batch in batches]
    with lm.truncated(max(layers) + 1):
        for ids, mask in tensors:
            lm.model.model(input_ids=ids, attention_mask=mask, use_cache=False)


# ----------------------------------------------------------------------------- main


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

    from safesail.lm import load_model

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
    rss_ready = _rss_bytes()

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
        f"{mib(_maxrss_bytes())}; collection's peak rises at most "
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
