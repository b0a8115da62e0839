"""The stored activation chunks read back, one chunk in memory at a time: the stream finalize
builds feature rows from, and the corpus-wide matrices (per-text maxima, token counts per
concept) that selection, triage and the explainer need.

The chunks were written by collection (``safesail.collection.collect``); reading them needs no model, so
these readers stay free of torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.db.tables import (
    ActivationChunk,
    Context,
    SaeRecord,
    get_meta,
    unpack_arrays,
    unpack_csr,
)
from safesail.errors import SafesailError


def stored_chunks(
    engine: Engine,
    sae_id: str,
    n_chunks: int,
    desc: str | None = None,
    *,
    tokens: bool = True,
    start: int = 0,
):
    """Yield (chunk index, token csr or None, text csr) in order from chunk `start`, one chunk
    in memory at a time; tokens=False skips unpacking the token-level arrays for callers that
    need texts only."""
    with Session(engine) as session:
        for index in tqdm(range(start, n_chunks), desc=desc, unit="chunk", disable=desc is None):
            row = session.get(ActivationChunk, (sae_id, index))
            if row is None:
                raise SafesailError(
                    f"SAE {sae_id}: chunk {index} is missing — rerun `safesail collect`"
                )
            arrays = unpack_arrays(row.data, "" if tokens else "txt")
            yield index, unpack_csr("tok", arrays) if tokens else None, unpack_csr("txt", arrays)


ENTRY_BYTES = 128
"""Memory one stored text maximum (a text, a feature, its max) takes while selection, triage or
the explainer works on a block of them: the block as read, its float64 copies, the fired mask,
``SortedColumns``' sort and one AUROC's temporaries. The budget divided by it is how many a
block may hold (checked against the peak by ``bench/scale.py``)."""

_SPILL = np.dtype([("row", "<i4"), ("col", "<i4"), ("val", "<f4")])
"""One text maximum in a block file of ``StoredTextMaxima``' full scan."""


class StoredTextMaxima:
    """Every text's max activation per feature of a collected SAE ([n_texts, d_sae], rows
    in the chunk plan's text order), read from the stored chunks a group of features at a
    time, never more of them at once than ``budget_bytes`` allows: what
    ``safesail.selection.metrics.TextMaxima`` asks of a workspace.

    The whole matrix grows with the corpus and with L0 (a 65k SAE over 1M tokens holds 78M
    maxima), so the steps after collection read it by blocks of features. Reading the
    chunks once per block would cost blocks x corpus, quadratic in the corpus; a full scan
    therefore reads them twice whatever the budget (once to count each feature's maxima and
    cut the blocks, once to write each block's maxima to its own file in a temporary
    folder, ``$TMPDIR``) and then reads one file per block. The counts are kept for the
    object's life, so the several scans of ``select`` count once.
    """

    def __init__(self, engine: Engine, sae_id: str, budget_bytes: int) -> None:
        with Session(engine) as session:
            self.plan: list[list[int]] = get_meta(session, "chunk_plan") or []
            record = session.get(SaeRecord, sae_id)
        if not self.plan or record is None or not record.collected:
            raise SafesailError(
                f"SAE {sae_id} has no collected activations — run `safesail collect`"
            )
        self.engine, self.sae_id = engine, sae_id
        self.text_ids = [t for chunk in self.plan for t in chunk]
        self.budget = max(1, budget_bytes // ENTRY_BYTES)
        """Text maxima a block may hold."""
        self._shape = (len(self.text_ids), record.d_sae)
        self._entries: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def entries(self) -> np.ndarray:
        """[d_sae] how many texts each feature fires on (its stored maxima): one read of the
        chunks, the first time."""
        if self._entries is None:
            counts = np.zeros(self.shape[1], dtype=np.int64)
            for _, _, texts in self._chunks():
                counts += np.bincount(texts.indices, minlength=self.shape[1])
            self._entries = counts
        return self._entries

    def feature_blocks(self) -> Iterator[tuple[int, sp.csc_array]]:
        """Consecutive features, as many as the budget holds (a feature alone above it is a
        block of its own)."""
        bounds = _cut(self.entries(), self.budget)
        if len(bounds) == 2:  # one block: no files
            yield 0, self._gather(np.arange(self.shape[1]))
            return
        with tempfile.TemporaryDirectory(prefix="safesail-maxima-") as folder:
            files = [Path(folder) / f"{b}.bin" for b in range(len(bounds) - 1)]
            offset = 0
            for _, _, texts in self._chunks():
                coo = texts.tocoo()
                block = np.searchsorted(bounds, coo.col, side="right") - 1
                order = np.argsort(block, kind="stable")
                cuts = np.searchsorted(block[order], np.arange(len(files) + 1))
                for b in np.flatnonzero(np.diff(cuts)):
                    part = order[cuts[b] : cuts[b + 1]]
                    out = np.empty(len(part), dtype=_SPILL)
                    out["row"], out["col"], out["val"] = (
                        coo.row[part] + offset,
                        coo.col[part],
                        coo.data[part],
                    )
                    with files[b].open("ab") as f:
                        out.tofile(f)
                offset += texts.shape[0]
            for b, path in enumerate(files):
                start, width = int(bounds[b]), int(bounds[b + 1] - bounds[b])
                held = np.fromfile(path, dtype=_SPILL) if path.exists() else np.empty(0, _SPILL)
                path.unlink(missing_ok=True)
                yield (
                    start,
                    sp.csc_array(
                        (held["val"], (held["row"], held["col"] - start)),
                        shape=(self.shape[0], width),
                    ),
                )

    def columns(self, requests: Sequence[np.ndarray]) -> Iterator[sp.csc_array]:
        """Consecutive requests whose features fit the budget together are read in one pass
        over the chunks (a request alone above it in a pass of its own)."""
        entries = self.entries()
        group: list[np.ndarray] = []
        held: set[int] = set()
        held_entries = 0
        for request in requests:
            features = np.asarray(request, dtype=np.int64)
            new = set(features.tolist()) - held
            if group and held_entries + int(entries[list(new)].sum()) > self.budget:
                yield from self._split(group, held)
                group, held, held_entries = [], set(), 0
                new = set(features.tolist())
            group.append(features)
            held |= new
            held_entries += int(entries[list(new)].sum())
        if group:
            yield from self._split(group, held)

    def _split(self, group: list[np.ndarray], held: set[int]) -> Iterator[sp.csc_array]:
        """Each request of ``group`` from one pass that reads the features they hold."""
        union = np.array(sorted(held), dtype=np.int64)
        matrix = self._gather(union)
        for features in group:
            yield matrix[:, np.searchsorted(union, features)]

    def _gather(self, features: np.ndarray) -> sp.csc_array:
        """The columns of ``features`` (sorted, unique) in one pass over the chunks."""
        if len(features) and features[-1] - features[0] + 1 == len(features):  # a range
            take: slice | np.ndarray = slice(int(features[0]), int(features[-1]) + 1)
        else:
            take = features
        parts = [texts[:, take] for _, _, texts in self._chunks()]
        return sp.csc_array(sp.vstack(parts, format="csc"))

    def _chunks(self) -> Iterator[tuple[int, None, sp.csr_matrix]]:
        return stored_chunks(self.engine, self.sae_id, len(self.plan), tokens=False)


def _cut(entries: np.ndarray, budget: int) -> np.ndarray:
    """Block bounds over features (first feature of each block, then d_sae): consecutive
    features while their maxima fit ``budget``, at least one feature per block."""
    bounds, held = [0], 0
    for f, n in enumerate(entries.tolist()):
        if held and held + n > budget:
            bounds.append(f)
            held = 0
        held += n
    bounds.append(len(entries))
    return np.array(bounds)


class ConceptTokenCounts(NamedTuple):
    """Token-level firing counts of every feature, inside each concept's texts and overall."""

    concepts: list[str]
    fires: np.ndarray
    """[n_concepts, d_sae] tokens of the concept's texts the feature fires on."""
    tokens: np.ndarray
    """[n_concepts] tokens the concept's texts hold."""
    fires_all: np.ndarray
    """[d_sae] tokens of the whole corpus the feature fires on."""
    tokens_all: int


def concept_token_counts(
    engine: Engine, sae_id: str, concepts: dict[int, list[str]], names: Sequence[str]
) -> ConceptTokenCounts:
    """How many tokens of each concept's texts (and of all texts) every feature fires on, from
    the stored token-level chunks, one chunk in memory at a time.

    A feature's firing rate alone cannot tell a feature that fires on every token of violence
    texts (a concept feature, however dense) from one that fires on every text; the firing
    rate outside a concept's texts can.
    """
    with Session(engine) as session:
        plan: list[list[int]] = get_meta(session, "chunk_plan") or []
        lengths = {c.text_id: len(c.token_ids) for c in session.exec(select(Context))}
    column = {name: i for i, name in enumerate(names)}
    fires: np.ndarray | None = None
    fires_all: np.ndarray | None = None
    tokens = np.zeros(len(names))
    tokens_all = 0
    for index, tok, _ in stored_chunks(engine, sae_id, len(plan)):
        text_ids = plan[index]
        pairs = [(j, column[c]) for j, t in enumerate(text_ids) for c in concepts[t] if c in column]
        rows, cols = [j for j, _ in pairs], [c for _, c in pairs]
        of_text = sp.csr_matrix(
            (np.ones(len(pairs)), (rows, cols)), shape=(len(text_ids), len(names))
        )
        per_token = of_text[np.repeat(np.arange(len(text_ids)), [lengths[t] for t in text_ids])]
        on = (tok > 0).astype(np.float64)
        chunk_fires = (per_token.T @ on).toarray()
        fires = chunk_fires if fires is None else fires + chunk_fires
        chunk_all = np.asarray(on.sum(axis=0)).ravel()
        fires_all = chunk_all if fires_all is None else fires_all + chunk_all
        tokens += np.asarray(per_token.sum(axis=0)).ravel()
        tokens_all += tok.shape[0]
    if fires is None or fires_all is None:
        raise SafesailError(f"SAE {sae_id} has no collected activations — run `safesail collect`")
    return ConceptTokenCounts(list(names), fires, tokens, fires_all, tokens_all)
