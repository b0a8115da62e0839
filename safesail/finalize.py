"""Feature rows from the stored activation chunks: per feature its statistics (firing counts,
mean and max activation, quantiles, per-concept means and firing rates) and its examples.

Finalize is a pure function of the stored chunks, so rerunning it gives the same rows, and it
holds one chunk in memory at a time plus arrays of a fixed size per feature (top-K texts,
histograms, the decile sample), so corpus size does not bound it. It reads the chunks four
times, each pass waiting for what the one before learned:
1. statistics, each feature's max activation and its top-K texts;
2. a histogram of each feature's other activating texts by their max activation (bins up to
   the max from pass 1), which fixes the activation deciles;
3. a random sample of those texts per decile (`DecileReservoir`);
4. the token-level histograms (quantiles) and the per-token activations of the chosen examples.
Passes 2 and 3 read only the per-text maxima, the smaller half of a chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.activations import stored_chunks
from safesail.config import CollectConfig
from safesail.example_blobs import ExampleHits, example_blobs
from safesail.examples import (
    DECILES,
    DecileReservoir,
    choose_examples,
    decile_table,
    in_sorted,
)
from safesail.storage import (
    Context,
    Feature,
    SaeRecord,
    corpus_concepts,
    get_meta,
    session_scope,
)

ROW_BATCH = 8192
"""Feature rows inserted per statement."""


class CorpusView(NamedTuple):
    """What finalize needs to know about the corpus, read once for all SAEs."""

    plan: list[list[int]]
    concepts: dict[int, list[str]]
    lengths: dict[int, int]

    @classmethod
    def read(cls, engine: Engine) -> CorpusView:
        with Session(engine) as session:
            return cls(
                get_meta(session, "chunk_plan") or [],
                corpus_concepts(session),
                {c.text_id: len(c.token_ids) for c in session.exec(select(Context))},
            )


class TextLayout(NamedTuple):
    """Where each text sits in the stream of chunks, and its concepts as a matrix: both passes
    address a text by its position, so (feature, position) pairs fit in one integer key."""

    names: list[str]
    """Every concept of the corpus, sorted: the rows of concept_of, the keys of concept_stats."""
    order: list[int]
    """The text id at each position (the chunk plan, flattened)."""
    concept_of: sp.csr_matrix
    """[concepts, positions]: 1 where the text at that position carries the concept."""


class FirstPass(NamedTuple):
    """What pass 1 gathers per feature (d features, k = top_k, c concepts)."""

    n_tokens: int
    n_fire: np.ndarray
    """[d] tokens the feature fires on."""
    total: np.ndarray
    """[d] sum of its token activations."""
    max_act: np.ndarray
    """[d] its strongest activation (float32)."""
    concept_sum: np.ndarray
    """[c, d] sum of per-text maxima over each concept's texts."""
    concept_fire: np.ndarray
    """[c, d] texts of each concept it fires in."""
    concept_n: np.ndarray
    """[c] texts of each concept."""
    top_vals: np.ndarray
    """[k, d] the per-text maxima of its top-K texts, strongest first."""
    top_pos: np.ndarray
    """[k, d] the positions of those texts."""

    def top_keys(self, n_texts: int) -> np.ndarray:
        """The top-K (feature, text) pairs as sorted keys feature * n_texts + position."""
        d = self.top_vals.shape[1]
        return np.sort((np.arange(d)[None, :] * n_texts + self.top_pos)[self.top_vals > 0])


def finalize(
    engine: Engine,
    sae_id: str,
    config: CollectConfig,
    *,
    corpus: CorpusView | None = None,
    progress: bool = True,
) -> None:
    """Build the feature rows of one SAE from its stored chunks (bounded memory, idempotent)."""
    corpus = corpus or CorpusView.read(engine)
    with Session(engine) as session:
        d = session.get(SaeRecord, sae_id).d_sae
    layout = _text_layout(corpus)
    n_texts = len(layout.order)
    first = _first_pass(
        engine,
        sae_id,
        d,
        len(corpus.plan),
        layout,
        config.top_k,
        f"Statistics {sae_id}" if progress else None,
    )
    top_keys = first.top_keys(n_texts)
    deciles = _decile_sample(
        engine,
        sae_id,
        len(corpus.plan),
        n_texts,
        first.max_act,
        top_keys,
        config,
        f"Deciles {sae_id}" if progress else None,
    )
    pair_keys, pair_kinds = choose_examples(top_keys, *deciles)
    hist, hits = _second_pass(
        engine,
        sae_id,
        corpus,
        n_texts,
        first.max_act,
        pair_keys,
        config.histogram_bins,
        f"Examples {sae_id}" if progress else None,
    )
    examples = example_blobs(d, pair_keys, pair_kinds, hits, layout.order, corpus.lengths)
    rows = _feature_rows(
        sae_id,
        first,
        _quantiles(hist, first.n_fire, first.max_act, config),
        _concept_means(first, len(layout.names)),
        layout.names,
        examples,
    )
    _write_features(engine, sae_id, rows)


def _text_layout(corpus: CorpusView) -> TextLayout:
    """Concept names, text positions and the concept one-hot matrix of the whole corpus."""
    names = sorted({c for cs in corpus.concepts.values() for c in cs})
    order = [t for chunk in corpus.plan for t in chunk]
    column = {c: i for i, c in enumerate(names)}
    rows_, cols_ = zip(
        *[(column[c], j) for j, t in enumerate(order) for c in corpus.concepts[t]], strict=True
    )
    concept_of = sp.csr_matrix(
        (np.ones(len(rows_)), (rows_, cols_)), shape=(len(names), len(order))
    )
    return TextLayout(names, order, concept_of)


def _first_pass(
    engine: Engine,
    sae_id: str,
    d: int,
    n_chunks: int,
    layout: TextLayout,
    top_k: int,
    desc: str | None,
) -> FirstPass:
    """Pass 1: counts, sums, maxima, per-concept text statistics and a streaming top-K of
    texts per feature: what choosing examples and binning the histograms wait for."""
    n_names = len(layout.names)
    n_tokens = 0
    n_fire = np.zeros(d, dtype=np.int64)
    total = np.zeros(d)
    max_act = np.zeros(d, dtype=np.float32)
    concept_sum = np.zeros((n_names, d))
    concept_fire = np.zeros((n_names, d))
    concept_n = np.zeros(n_names)
    top_vals = torch.zeros((0, d))
    top_pos = torch.zeros((0, d), dtype=torch.long)
    offset = 0
    for _, tokens, texts in stored_chunks(engine, sae_id, n_chunks, desc):
        n_tokens += tokens.shape[0]
        n_fire += np.bincount(tokens.indices, minlength=d)
        total += np.bincount(tokens.indices, weights=tokens.data, minlength=d)
        max_act = np.maximum(max_act, texts.max(axis=0).toarray().ravel())
        onehot = layout.concept_of[:, offset : offset + texts.shape[0]]
        concept_n += np.asarray(onehot.sum(axis=1)).ravel()
        concept_sum += (onehot @ texts).toarray()
        concept_fire += (onehot @ (texts > 0).astype(np.float64)).toarray()
        top_vals, top_pos = _merge_top_k(top_vals, top_pos, texts, offset, top_k)
        offset += texts.shape[0]
    return FirstPass(
        n_tokens,
        n_fire,
        total,
        max_act,
        concept_sum,
        concept_fire,
        concept_n,
        top_vals.numpy(),
        top_pos.numpy(),
    )


def _merge_top_k(
    top_vals: torch.Tensor, top_pos: torch.Tensor, texts: sp.csr_matrix, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-K texts per feature so far merged with one chunk's texts (at positions from
    offset): keeping only K rows bounds memory however large the corpus is."""
    d = top_vals.shape[1]
    dense = torch.from_numpy(texts.toarray())
    vals = torch.cat([top_vals, dense])
    pos = torch.cat(
        [top_pos, torch.arange(offset, offset + dense.shape[0]).unsqueeze(1).expand(-1, d)]
    )
    top_vals, idx = torch.topk(vals, min(k, vals.shape[0]), dim=0)
    return top_vals, torch.gather(pos, 0, idx)


def _decile_sample(
    engine: Engine,
    sae_id: str,
    n_chunks: int,
    n_texts: int,
    max_act: np.ndarray,
    top_keys: np.ndarray,
    config: CollectConfig,
    desc: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Passes 2 and 3: the activation deciles of every feature's activating texts outside its
    top-K (from a histogram of their max activations), then `per_decile` random texts of
    each decile. Returns the chosen pair keys and their deciles."""
    d, bins = len(max_act), config.histogram_bins
    if not config.per_decile:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
    hist = np.zeros(d * bins, dtype=np.int32)
    texts = (engine, sae_id, n_chunks, n_texts, top_keys, bin_scale(max_act, bins), bins)
    for _, cells in _other_texts(*texts, desc):
        count_cells(hist, cells)
    table = decile_table(hist.reshape(d, bins)).ravel()
    del hist
    reservoir = DecileReservoir(d, config.per_decile, config.seed)
    for keys, cells in _other_texts(*texts, None):
        reservoir.offer(cells // bins * DECILES + table[cells] - 1, keys)
    return reservoir.chosen()


def _other_texts(
    engine: Engine,
    sae_id: str,
    n_chunks: int,
    n_texts: int,
    top_keys: np.ndarray,
    scale: np.ndarray,
    bins: int,
    desc: str | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk, the (feature, text) pairs where the feature fires outside its top-K texts:
    their pair keys and histogram cells (feature * bins + the bin of the text's max)."""
    offset = 0
    for _, _, texts in stored_chunks(engine, sae_id, n_chunks, desc, tokens=False):
        coo = texts.tocoo()
        keys = coo.col.astype(np.int64) * n_texts + offset + coo.row
        rest = ~in_sorted(keys, top_keys)
        yield keys[rest], _cells(coo.col[rest], coo.data[rest], scale, bins)
        offset += texts.shape[0]


def _second_pass(
    engine: Engine,
    sae_id: str,
    corpus: CorpusView,
    n_texts: int,
    max_act: np.ndarray,
    pair_keys: np.ndarray,
    bins: int,
    desc: str | None,
) -> tuple[np.ndarray, ExampleHits]:
    """Pass 2: every feature's activation histogram (bins up to its max activation, known
    from pass 1) and the per-token activations of the examples pass 1 chose."""
    d = len(max_act)
    hist = np.zeros(d * bins, dtype=np.int32)  # counts per cell stay far below 2**31
    scale = bin_scale(max_act, bins)
    hit_keys, hit_pos, hit_val = [], [], []
    offset = 0
    for index, tokens, texts in stored_chunks(engine, sae_id, len(corpus.plan), desc):
        coo = tokens.tocoo()
        count_cells(hist, _cells(coo.col, coo.data, scale, bins))
        lens = np.array([corpus.lengths[t] for t in corpus.plan[index]])
        keys, pos, val = _chunk_hits(coo, lens, offset, n_texts, pair_keys)
        hit_keys.append(keys)
        hit_pos.append(pos)
        hit_val.append(val)
        offset += texts.shape[0]
    hit_keys, hit_pos, hit_val = (
        np.concatenate(a) if a else np.zeros(0) for a in (hit_keys, hit_pos, hit_val)
    )
    sort = np.lexsort((hit_pos, hit_keys))
    return hist, ExampleHits(hit_keys[sort], hit_pos[sort], hit_val[sort])


def bin_scale(max_act: np.ndarray, bins: int) -> np.ndarray:
    """Per feature, activation -> bin: histograms of max_act / bins wide (0 for a feature
    that never fires)."""
    return np.where(max_act > 0, bins / np.maximum(max_act, 1e-30), 0)


def count_cells(hist: np.ndarray, cells: np.ndarray) -> None:
    """Add one chunk's histogram cells to a flat [d * bins] histogram. Counting only the
    cells the chunk touches keeps each chunk's cost in its own size, not d * bins."""
    touched, counts = np.unique(cells, return_counts=True)
    hist[touched] += counts.astype(np.int32)


def _cells(cols: np.ndarray, values: np.ndarray, scale: np.ndarray, bins: int) -> np.ndarray:
    """Histogram cells feature * bins + bin of activations of the given features (scale from
    `bin_scale`), the top bin closed, so that each feature's max falls inside it."""
    bin_index = np.minimum((values * scale[cols]).astype(np.int64), bins - 1)
    return cols.astype(np.int64) * bins + bin_index


def _chunk_hits(
    coo: sp.coo_matrix, lens: np.ndarray, offset: int, n_texts: int, pair_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The token activations of one chunk that belong to a chosen example: their pair keys,
    token positions inside their text, and values. Token rows of a chunk are its texts'
    tokens back to back (lens), so a row maps to a text and a position by cumulative sums."""
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    local_text = np.repeat(np.arange(len(lens)), lens)[coo.row]
    keys = coo.col.astype(np.int64) * n_texts + offset + local_text
    hit = in_sorted(keys, pair_keys)
    return keys[hit], coo.row[hit] - starts[local_text[hit]], coo.data[hit]


def _quantiles(
    hist: np.ndarray, n_fire: np.ndarray, max_act: np.ndarray, config: CollectConfig
) -> dict[str, list[float]]:
    """Per quantile, every feature's activation at it (the upper edge of the histogram bin the
    quantile falls in), 0 for features that never fire; vectorised over blocks of features
    (the cumulative counts of one block at a time, not of all d * bins cells)."""
    d, bins = len(n_fire), config.histogram_bins
    cells = hist.reshape(d, bins)
    out: dict[str, list[np.ndarray]] = {str(q): [] for q in config.quantiles}
    for a in range(0, d, 8192):
        cum = cells[a : a + 8192].cumsum(axis=1)
        fire, peak = n_fire[a : a + 8192], max_act[a : a + 8192]
        for q in config.quantiles:
            index = np.minimum((cum < (q * fire)[:, None]).sum(axis=1), bins - 1) + 1
            out[str(q)].append(np.where(fire > 0, index * (peak / bins), 0.0))
    return {q: np.concatenate(v).tolist() if v else [] for q, v in out.items()}


def _concept_means(first: FirstPass, n_names: int) -> list[tuple[list[float], list[float]]]:
    """Per concept: every feature's mean per-text max activation over the concept's texts and
    the share of those texts it fires in (0 for a concept without texts)."""
    return [
        (
            (first.concept_sum[i] / max(first.concept_n[i], 1)).tolist(),
            (first.concept_fire[i] / max(first.concept_n[i], 1)).tolist(),
        )
        for i in range(n_names)
    ]


def _feature_rows(
    sae_id: str,
    first: FirstPass,
    quantiles: dict[str, list[float]],
    per_concept: list[tuple[list[float], list[float]]],
    names: list[str],
    examples: list[bytes | None],
) -> Iterator[dict[str, Any]]:
    """One Feature mapping per feature, from plain Python lists (indexing numpy arrays per
    feature would cost more than everything else here), made as they are written."""
    n_fire_l, total_l, max_l = first.n_fire.tolist(), first.total.tolist(), first.max_act.tolist()
    return (
        dict(
            sae_id=sae_id,
            index=f,
            n_fire=n_fire_l[f],
            firing_rate=n_fire_l[f] / max(first.n_tokens, 1),
            mean_act=total_l[f] / n_fire_l[f] if n_fire_l[f] else 0.0,
            max_act=max_l[f],
            quantiles={q: v[f] for q, v in quantiles.items()},
            concept_stats={
                c: [per_concept[i][0][f], per_concept[i][1][f]] for i, c in enumerate(names)
            },
            examples=examples[f],
        )
        for f in range(len(examples))
    )


def _write_features(engine: Engine, sae_id: str, rows: Iterator[dict[str, Any]]) -> None:
    """Replace the SAE's feature rows and mark it collected in one transaction, so a crash
    leaves either the old rows or the new ones, never a mix; rows go in batches, so only
    one batch of row mappings exists at a time."""
    with session_scope(engine) as session:
        session.exec(delete(Feature).where(Feature.sae_id == sae_id))
        while batch := list(islice(rows, ROW_BATCH)):
            session.bulk_insert_mappings(Feature, batch)
        record = session.get(SaeRecord, sae_id)
        record.collected = True
        session.add(record)
