"""The stored activation chunks of one SAE as finalize's passes read them: runs of chunks joined
up to a bounded size, the first ones kept decoded between passes, and the (feature, text) pairs
a pass looks up, one run at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sqlalchemy.engine import Engine

from safesail.collection.chunks import stored_chunks
from safesail.features.examples import in_sorted

BATCH_CELLS = 1 << 21
"""Texts x features a pass handles at once (the top-K merge makes them dense: 8 MB in float32).
Consecutive stored chunks are read together up to this size, so a narrow SAE's pass costs a
few array operations instead of a few per 32-text chunk, and a 65k-wide one still takes one
chunk at a time."""
CACHE_BYTES = 128 << 20
"""Decoded chunks kept between passes (see `ChunkStream`)."""


class ChunkBatch(NamedTuple):
    """Consecutive stored chunks read as one: the positions of their texts start at offset."""

    offset: int
    tokens: sp.csr_matrix | None
    """[tokens, d] token activations (None when the pass reads texts only)."""
    texts: sp.csr_matrix
    """[texts, d] per-text maxima."""


class ChunkStream:
    """One SAE's stored chunks, read pass after pass in runs of up to `BATCH_CELLS` texts x
    features. The first chunks read stay decoded in memory while they fit in `CACHE_BYTES`,
    so the later passes over a small SAE (the demo's hold a few MB) skip the database and
    the npz parsing, and a large one is read again from where the cache ends."""

    def __init__(self, engine: Engine, sae_id: str, n_chunks: int, d: int) -> None:
        self.engine, self.sae_id, self.n_chunks, self.d = engine, sae_id, n_chunks, d
        self._cache: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        self._cached_bytes = 0
        self._caching = True

    def batches(self, desc: str | None, *, tokens: bool = True) -> Iterator[ChunkBatch]:
        per_batch = max(1, BATCH_CELLS // max(self.d, 1))  # texts
        run: list[tuple[sp.csr_matrix | None, sp.csr_matrix]] = []
        offset = held = 0
        for tok, txt in self._chunks(desc, tokens):
            tok = tok if tokens else None  # a cached chunk holds both: join only what is asked
            if run and held + txt.shape[0] > per_batch:
                yield _joined(offset, run)
                offset, run, held = offset + held, [], 0
            run.append((tok, txt))
            held += txt.shape[0]
        if run:
            yield _joined(offset, run)

    def _chunks(
        self, desc: str | None, tokens: bool
    ) -> Iterator[tuple[sp.csr_matrix | None, sp.csr_matrix]]:
        yield from self._cache
        start = len(self._cache)
        for _, tok, txt in stored_chunks(
            self.engine, self.sae_id, self.n_chunks, desc, tokens=tokens, start=start
        ):
            if self._caching and tok is not None:
                size = sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (tok, txt))
                self._caching = self._cached_bytes + size <= CACHE_BYTES
                if self._caching:
                    self._cache.append((tok, txt))
                    self._cached_bytes += size
            yield tok, txt


def _joined(offset: int, run: list[tuple[sp.csr_matrix | None, sp.csr_matrix]]) -> ChunkBatch:
    if len(run) == 1:
        return ChunkBatch(offset, *run[0])
    toks, txts = zip(*run, strict=True)
    tokens = None if toks[0] is None else sp.vstack(toks, format="csr")
    return ChunkBatch(offset, tokens, sp.vstack(txts, format="csr"))


class PairIndex:
    """A sorted set of (feature, text position) pair keys (feature * n_texts + position),
    looked up one batch of positions at a time: a batch's own pairs, as codes
    local position * d + feature, are a small sorted array, and the batch's entries come in
    nearly that order, so the binary searches stay in cache instead of ranging over the whole
    set for every entry."""

    def __init__(self, keys: np.ndarray, n_texts: int, d: int) -> None:
        self.keys, self.n_texts, self.d = keys, n_texts, d
        pos, feature = keys % max(n_texts, 1), keys // max(n_texts, 1)
        order = np.argsort(pos, kind="stable")  # keys are sorted: features ascend per position
        self.pos, self.feature = pos[order], feature[order]

    def contains(self, local: np.ndarray, features: np.ndarray, offset: int, n: int) -> np.ndarray:
        """Which (position offset + local, feature) pairs are in the set, for entries of the
        batch of positions [offset, offset + n): searched among that batch's own pairs, as
        sorted codes local position * d + feature."""
        a, b = np.searchsorted(self.pos, [offset, offset + n])
        codes = (self.pos[a:b] - offset) * self.d + self.feature[a:b]
        return in_sorted(local.astype(np.int64) * self.d + features, codes)
