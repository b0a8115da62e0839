"""Timing for bench/collect.py: wall, CPU and memory of a phase, and a tree of where
collection's time goes.

Apart from the script so that its main reads as the experiment (inputs, runs, the report)
and this as the instrument: the library is timed by wrapping the functions collection calls,
never by editing it, and every patch is undone on exit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from safesail.collection import chunks as A
from safesail.collection import collect as C
from safesail.collection import finalize as F
from safesail.db.tables import SaeRecord


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (first line of /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
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
            self.peak = max(self.peak, rss_bytes())

    def reset(self) -> None:
        self.peak = rss_bytes()

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
        self.rss_start = rss_bytes()
        self._busy = machine_busy_seconds()
        self._cpu, self._wall = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = cpu_seconds() - self._cpu
        # Cores used by other processes meanwhile: the noise this phase suffered.
        self.others = max(0.0, machine_busy_seconds() - self._busy - self.cpu) / self.wall
        self.rss_peak = max(self.sampler.peak, rss_bytes())


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
        cpu, start = cpu_seconds(), time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.excluded_wall += spent
            self.excluded_cpu += cpu_seconds() - cpu
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
    Finalize has few sub-functions, so its sections are found from its four streams over the
    stored chunks (safesail.collection.stream.ChunkStream.batches): the passes, the gaps between them (the decile table,
    choosing examples) and after the last (building rows), then the write. Names that no
    longer exist are skipped with a note.
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
    capture = lm.capture
    paired = functools.partial(pairing.run, capture) if pairing else None
    patch(lm, "capture", "lm.capture (forward)", paired)
    patch(C, "encode_csr", "SAE encode (bounded, -> CSR)")
    patch(C, "_per_text_max", "per-text max")
    patch(C, "pack_csr", "pack_csr")
    patch(C, "pack_arrays", "pack_arrays (np.savez)")
    patch(A, "unpack_arrays", "unpack_arrays (np.load)")
    patch(A, "unpack_csr", "unpack_csr")
    patch(F, "pack_examples", "pack_examples")

    original_finalize = C.finalize

    @functools.wraps(original_finalize)
    def finalize(*args: Any, **kwargs: Any) -> Any:
        passes["n"] = 0
        with tree.region("finalize"):
            tree.begin("setup (read plan, concepts, lengths)", phase=True)
            return original_finalize(*args, **kwargs)

    patched.append((C, "finalize", original_finalize))
    C.finalize = finalize

    # Finalize streams the stored chunks four times (ChunkStream.batches); the gap after each
    # pass is a section of its own. A run with per_decile=0 skips passes 2 and 3 and shifts the
    # names. Chunks read from the database (not from the stream's cache) are timed inside.
    original_batches = F.ChunkStream.batches
    sections = [
        ("pass 1: stats, concepts, top-K", "histogram setup"),
        ("pass 2: decile histograms of the other texts", "decile table, reservoir setup"),
        ("pass 3: decile samples (reservoir)", "choose examples"),
        (
            "pass 4: token histograms, example activations",
            "build feature rows (quantiles, dicts, pack)",
        ),
    ]
    passes = {"n": 0}

    def batches(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if "finalize" not in tree.top():
            yield from original_batches(self, *args, **kwargs)
            return
        n = passes["n"] = passes["n"] + 1
        during, after = sections[n - 1] if n <= len(sections) else (f"pass {n}", f"after {n}")
        tree.end_phase()
        tree.begin(during, phase=True)
        yield from original_batches(self, *args, **kwargs)
        tree.end_phase()
        tree.begin(after, phase=True)

    patched.append((F.ChunkStream, "batches", original_batches))
    F.ChunkStream.batches = batches

    original_chunks = F.stored_chunks

    def stored_chunks(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if "finalize" not in tree.top():
            yield from original_chunks(*args, **kwargs)
            return
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

    patched.append((F, "stored_chunks", original_chunks))
    F.stored_chunks = stored_chunks

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
    patched.append((F, "session_scope", original_scope))  # finalize writes its rows
    F.session_scope = session_scope

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
    from safesail.model.saes import load_sae

    return load_sae(record)
