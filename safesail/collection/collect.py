"""The activation cache: stream the corpus through the model once, encode with every SAE, and
store each chunk's sparse activations for finalize (safesail.collection.finalize) to build feature rows
from.

Work is split into chunks of texts. Each chunk's sparse activations are written in one
transaction keyed by (SAE, chunk), so an interrupted run resumes where it stopped and nothing is
counted twice. `finalize` then streams the stored chunks to build feature rows; it is a pure
function of those chunks, so rerunning it gives the same result.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.collection.finalize import CorpusView, finalize
from safesail.collection.plan import chunk_plan, prepare_contexts
from safesail.config import CollectConfig
from safesail.db.queries import LIST_SAES
from safesail.db.tables import (
    REFERENCE_ONLY,
    ActivationChunk,
    Context,
    SaeRecord,
    pack_arrays,
    pack_csr,
    session_scope,
)
from safesail.errors import SafesailError
from safesail.model.encode import encode_csr
from safesail.model.lm import LanguageModel
from safesail.model.saes import site_of
from safesail.model.sites import Site

if TYPE_CHECKING:
    from safesail.collection.residuals import ResidualStore


def encode_chunk(
    lm: LanguageModel,
    saes: dict[str, tuple[SaeRecord, torch.nn.Module]],
    contexts: Sequence[Sequence[int]],
    captured: dict[Site, torch.Tensor] | None = None,
) -> dict[str, tuple[sp.csr_matrix, sp.csr_matrix]]:
    """Per SAE: token-level sparse activations and per-text max activations of one chunk.
    One forward captures every SAE's own hook site (unless `captured` already holds them, read
    from a residual store); each encode is memory-bounded."""
    sites = {sae_id: site_of(record) for sae_id, (record, _) in saes.items()}
    if captured is None:
        captured = lm.capture(contexts, list(dict.fromkeys(sites.values())))
    lengths = np.array([len(c) for c in contexts])
    text_index = np.repeat(np.arange(len(contexts)), lengths)
    out = {}
    for sae_id, (_, sae) in saes.items():
        tokens = encode_csr(sae, captured[sites[sae_id]])
        out[sae_id] = (tokens, _per_text_max(tokens, text_index, len(contexts)))
    return out


def _per_text_max(tokens: sp.csr_matrix, text_index: np.ndarray, n_texts: int) -> sp.csr_matrix:
    """Each text's max activation per feature, from the token-level sparse activations."""
    coo = tokens.tocoo()
    rows = text_index[coo.row]
    flat = rows.astype(np.int64) * tokens.shape[1] + coo.col
    order = np.argsort(flat)  # any order of equal keys: their max is the same
    flat = flat[order]
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    best = np.maximum.reduceat(coo.data[order], starts) if len(flat) else coo.data[:0]
    keys = flat[starts]
    return sp.csr_matrix(
        (best, (keys // tokens.shape[1], keys % tokens.shape[1])), shape=(n_texts, tokens.shape[1])
    )


@dataclass(frozen=True)
class ChunkWork:
    """One chunk still to encode: its place in the plan, its texts' token ids, and the SAEs
    that lack it (a resumed run encodes only those)."""

    index: int
    contexts: list[list[int]]
    sae_ids: tuple[str, ...]

    @property
    def n_tokens(self) -> int:
        return sum(len(c) for c in self.contexts)


class ChunkRunner(Protocol):
    """Where the encoding of the chunk plan runs: this process (`LocalRunner`) or a Ray cluster
    (`safesail.collection.ray.RayRunner`). Whoever runs a chunk stores it with `encode_and_store`,
    so the unit of resumption is the same everywhere."""

    def run(
        self,
        engine: Engine,
        records: Sequence[SaeRecord],
        work: Sequence[ChunkWork],
        progress: bool,
    ) -> None: ...


def encode_and_store(
    engine: Engine,
    lm: LanguageModel,
    saes: dict[str, tuple[SaeRecord, torch.nn.Module]],
    work: ChunkWork,
    store: ResidualStore | None = None,
) -> int:
    """Encode one chunk with the SAEs that lack it and store it for all of them in one
    transaction (rows keyed by (SAE, chunk): a chunk is stored whole or not at all, and a
    second copy is refused by the key). The residuals come from `store` when it holds every
    site needed, else from a forward pass. Returns the chunk's token count."""
    wanted = {k: saes[k] for k in work.sae_ids}
    sites = list(dict.fromkeys(site_of(record) for record, _ in wanted.values()))
    captured = store.chunk(work.index, sites, lm.device) if store and store.covers(sites) else None
    encoded = encode_chunk(lm, wanted, work.contexts, captured)
    with session_scope(engine) as session:
        for sae_id, (tokens, texts) in encoded.items():
            blob = pack_arrays(**pack_csr("tok", tokens), **pack_csr("txt", texts))
            session.add(
                ActivationChunk(
                    sae_id=sae_id,
                    chunk=work.index,
                    n_texts=len(work.contexts),
                    n_tokens=tokens.shape[0],
                    data=blob,
                )
            )
    return work.n_tokens


@dataclass
class LocalRunner:
    """The chunk plan in this process, one chunk after another."""

    lm: LanguageModel
    load: Callable[[SaeRecord], torch.nn.Module]
    store: ResidualStore | None = None

    def run(
        self,
        engine: Engine,
        records: Sequence[SaeRecord],
        work: Sequence[ChunkWork],
        progress: bool,
    ) -> None:
        saes = {r.id: (r, self.load(r)) for r in records}
        for item in tqdm(work, desc="Collecting activations", unit="chunk", disable=not progress):
            encode_and_store(engine, self.lm, saes, item, self.store)


def pending_work(
    plan: list[list[int]],
    records: Sequence[SaeRecord],
    done: set[tuple[str, int]],
    contexts: dict[int, list[int]],
) -> list[ChunkWork]:
    """The chunks some SAE still lacks, in plan order."""
    work = []
    for index, text_ids in enumerate(plan):
        wanted = tuple(r.id for r in records if (r.id, index) not in done)
        if wanted:
            work.append(ChunkWork(index, [contexts[t] for t in text_ids], wanted))
    return work


def collect(
    engine: Engine,
    lm: LanguageModel,
    load: Callable[[SaeRecord], torch.nn.Module],
    config: CollectConfig | None = None,
    *,
    sae_ids: Sequence[str] | None = None,
    progress: bool = True,
    runner: ChunkRunner | None = None,
    store: ResidualStore | None = None,
) -> list[str]:
    """Encode the corpus with every (or the given) SAE and finalize their features; resumable.

    `runner` says where the chunks are encoded (default: here, with `lm` and `load`, reading
    the residuals from `store` where it holds them); finalize always runs here, once, over the
    stored chunks."""
    with _older_objects_frozen():
        return _collect(
            engine, lm, load, config or CollectConfig(), sae_ids, progress, runner, store
        )


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep the garbage collector off the objects that existed before collection (the model,
    its modules, the libraries), for as long as it runs.

    Collection makes many small objects (contexts' token lists, feature rows), and each time
    they trigger a full collection Python walks every object of the process again (what it
    costs: bench/README.md, "Choices in the code"). Objects made meanwhile are
    collected as usual; on exit everything frozen goes back to the oldest generation
    (`gc.unfreeze` also releases what another caller froze: none in this process)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _collect(
    engine: Engine,
    lm: LanguageModel,
    load: Callable[[SaeRecord], torch.nn.Module],
    config: CollectConfig,
    sae_ids: Sequence[str] | None,
    progress: bool,
    runner: ChunkRunner | None,
    store: ResidualStore | None,
) -> list[str]:
    with Session(engine) as session:  # a mistyped --sae must change nothing: checked first
        missing = set(sae_ids or ()) - set(session.exec(select(SaeRecord.id)))
    if missing:
        raise SafesailError(f"unknown SAE id(s): {', '.join(sorted(missing))} — {LIST_SAES}")
    prepare_contexts(engine, lm, config.max_tokens)  # a changed corpus resets `collected`
    plan = chunk_plan(engine, config.chunk_texts)
    with Session(engine) as session:
        records = [r for r in session.exec(select(SaeRecord)) if sae_ids is None or r.id in sae_ids]
        todo = [r for r in records if not r.collected and r.source != REFERENCE_ONLY]
        done_chunks = {
            (c.sae_id, c.chunk)
            for c in session.exec(select(ActivationChunk.sae_id, ActivationChunk.chunk))
        }
        contexts = {c.text_id: c.token_ids for c in session.exec(select(Context))}
    if not todo:
        return []
    for record in todo:
        lm.check_layer(record.layer)
    work = pending_work(plan, todo, done_chunks, contexts)
    if store is not None and store.plan != plan:  # cached with another chunking: not these chunks
        store = None
    if work:
        (runner or LocalRunner(lm, load, store)).run(engine, todo, work, progress)
    corpus = CorpusView.read(engine)
    for record in todo:
        finalize(engine, record.id, config, corpus=corpus, progress=progress)
    return [r.id for r in todo]
