"""Feature rows from the stored activation chunks: per feature its statistics (firing counts,
mean and max activation, quantiles, per-concept means and firing rates) and its examples.

Finalize is a pure function of the stored chunks, so rerunning it gives the same rows, and it
holds a bounded run of chunks in memory at a time (`stream.BATCH_CELLS`) plus arrays of a fixed size
per feature (top-K texts, histograms, the decile sample), so corpus size does not bound it. It
reads the chunks four times, each pass waiting for what the one before learned:
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

from safesail.collection.histograms import (
    bin_scale,
    count_cells,
    histogram_cells,
    histogram_quantiles,
)
from safesail.collection.stream import ChunkStream, PairIndex
from safesail.config import CollectConfig
from safesail.db.tables import (
    Context,
    Feature,
    SaeRecord,
    corpus_concepts,
    get_meta,
    session_scope,
)
from safesail.features.blobs import ExampleHits, example_blobs
from safesail.features.examples import (
    DECILES,
    DecileReservoir,
    choose_examples,
    decile_table,
)

ROW_BATCH = 8192
"""Feature rows inserted per statement."""


class TextLayout(NamedTuple):
    """Where each text sits in the stream of chunks, and its concepts as a matrix: every pass
    addresses a text by its position, so (feature, position) pairs fit in one integer key."""

    names: list[str]
    """Every concept of the corpus, sorted: the rows of concept_of, the keys of concept_stats."""
    order: list[int]
    """The text id at each position (the chunk plan, flattened)."""
    concept_of: sp.csr_matrix
    """[concepts, positions]: 1 where the text at that position carries the concept."""
    lengths: np.ndarray
    """The token count of the text at each position."""


class CorpusView(NamedTuple):
    """What finalize needs to know about the corpus, read and laid out once for all SAEs."""

    plan: list[list[int]]
    layout: TextLayout

    @classmethod
    def read(cls, engine: Engine) -> CorpusView:
        with Session(engine) as session:
            plan = get_meta(session, "chunk_plan") or []
            concepts = corpus_concepts(session)
            lengths = {c.text_id: len(c.token_ids) for c in session.exec(select(Context))}
        return cls(plan, _text_layout(plan, concepts, lengths))


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
    layout = corpus.layout
    stream = ChunkStream(engine, sae_id, len(corpus.plan), d)
    first = _first_pass(stream, layout, config.top_k, f"Statistics {sae_id}" if progress else None)
    top = PairIndex(first.top_keys(len(layout.order)), len(layout.order), d)
    deciles = _decile_sample(
        stream, top, first.max_act, config, f"Deciles {sae_id}" if progress else None
    )
    pair_keys, pair_kinds = choose_examples(top.keys, *deciles)
    hist, hits = _fourth_pass(
        stream,
        layout,
        PairIndex(pair_keys, len(layout.order), d),
        first.max_act,
        config.histogram_bins,
        f"Examples {sae_id}" if progress else None,
    )
    examples = example_blobs(d, pair_keys, pair_kinds, hits, layout.order, layout.lengths)
    rows = _feature_rows(
        sae_id,
        first,
        histogram_quantiles(hist, first.n_fire, first.max_act, config),
        [str(q) for q in config.quantiles],
        _concept_means(first),
        layout.names,
        examples,
    )
    _write_features(engine, sae_id, rows)


def _text_layout(
    plan: list[list[int]], concepts: dict[int, list[str]], lengths: dict[int, int]
) -> TextLayout:
    """Concept names, text positions, lengths and the concept one-hot matrix of the corpus."""
    names = sorted({c for cs in concepts.values() for c in cs})
    order = [t for chunk in plan for t in chunk]
    column = {c: i for i, c in enumerate(names)}
    pairs = [(column[c], j) for j, t in enumerate(order) for c in concepts[t]]
    rows_, cols_ = zip(*pairs, strict=True) if pairs else ((), ())
    concept_of = sp.csr_matrix(
        (np.ones(len(rows_)), (rows_, cols_)), shape=(len(names), len(order))
    )
    return TextLayout(names, order, concept_of, np.array([lengths[t] for t in order], np.int64))


def _first_pass(stream: ChunkStream, layout: TextLayout, top_k: int, desc: str | None) -> FirstPass:
    """Pass 1: counts, sums, maxima, per-concept text statistics and a streaming top-K of
    texts per feature: what choosing examples and binning the histograms wait for."""
    d, n_names = stream.d, len(layout.names)
    n_tokens = 0
    n_fire = np.zeros(d, dtype=np.int64)
    total = np.zeros(d)
    max_act = np.zeros(d, dtype=np.float32)
    concept_sum = np.zeros((n_names, d))
    concept_fire = np.zeros((n_names, d))
    concept_n = np.zeros(n_names)
    top_vals = torch.zeros((0, d))
    top_pos = torch.zeros((0, d), dtype=torch.long)
    for offset, tokens, texts in stream.batches(desc):
        n_tokens += tokens.shape[0]
        n_fire += np.bincount(tokens.indices, minlength=d)
        total += np.bincount(tokens.indices, weights=tokens.data, minlength=d)
        max_act = np.maximum(max_act, texts.max(axis=0).toarray().ravel())
        onehot = layout.concept_of[:, offset : offset + texts.shape[0]]
        concept_n += np.asarray(onehot.sum(axis=1)).ravel()
        concept_sum += (onehot @ texts).toarray()
        concept_fire += (onehot @ (texts > 0).astype(np.float64)).toarray()
        top_vals, top_pos = _update_top_k(top_vals, top_pos, texts, offset, top_k)
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


def _update_top_k(
    top_vals: torch.Tensor, top_pos: torch.Tensor, texts: sp.csr_matrix, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_merge_top_k` on the features where the batch can change the top-K: once K texts are
    held, a later text enters only above a feature's K-th activation (on a tie the earlier
    text stays), and after the first batches few features see one. Merging only those keeps
    a 65k-wide SAE's top-K from costing a dense top-k over every feature per chunk."""
    if top_vals.shape[0] < k:
        return _merge_top_k(top_vals, top_pos, texts, offset, k)
    coo = texts.tocoo()
    edge = top_vals[-1].numpy()
    touched = np.unique(coo.col[coo.data > edge[coo.col]])
    if len(touched):
        columns = torch.from_numpy(touched.astype(np.int64))
        vals, pos = _merge_top_k(
            top_vals[:, columns], top_pos[:, columns], texts[:, touched], offset, k
        )
        top_vals[:, columns], top_pos[:, columns] = vals, pos
    return top_vals, top_pos


def _merge_top_k(
    top_vals: torch.Tensor, top_pos: torch.Tensor, texts: sp.csr_matrix, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-K texts per feature so far merged with one batch's texts (at positions from
    offset): keeping only K rows bounds memory however large the corpus is. A winner's row
    says where it came from: the K kept so far, or the batch's text at that row.

    Texts are ranked by activation, then by position (the earlier text first): texts that
    share a prefix share its activations, so ties are common, and without this order which of
    them is kept would depend on how the chunks were batched."""
    held, held_pos = top_vals.shape[0], top_pos
    vals = torch.cat([top_vals, torch.from_numpy(texts.toarray())])
    top_vals, idx = torch.topk(vals, min(k, vals.shape[0]), dim=0)
    kept = torch.gather(held_pos, 0, idx.clamp(max=max(held - 1, 0))) if held else idx
    top_pos = torch.where(idx < held, kept, idx - held + offset)
    edge = top_vals[-1]  # the K-th activation of each feature
    inside = (top_vals == edge).sum(dim=0)
    split = torch.nonzero(((vals == edge).sum(dim=0) > inside) & (edge > 0)).ravel()
    if len(split):  # texts at the edge value were left out: the earliest ones win
        fresh = torch.arange(offset, offset + vals.shape[0] - held).unsqueeze(1)
        where = torch.cat([held_pos[:, split], fresh.expand(-1, len(split))])
        where[vals[:, split] != edge[split]] = torch.iinfo(torch.long).max
        need = inside[split]
        slot = torch.arange(int(need.max())).unsqueeze(1)
        earliest = torch.topk(where, len(slot), dim=0, largest=False).values  # ascending
        fill = slot < need
        rows = (top_vals.shape[0] - need + slot)[fill]
        top_pos[rows, split.expand(len(slot), -1)[fill]] = earliest[fill]
    return top_vals, top_pos


def _decile_sample(
    stream: ChunkStream,
    top: PairIndex,
    max_act: np.ndarray,
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
    scale = bin_scale(max_act, bins)
    for _, cells in _other_texts(stream, top, scale, bins, desc):
        count_cells(hist, cells)
    table = decile_table(hist.reshape(d, bins)).ravel()
    del hist
    reservoir = DecileReservoir(d, config.per_decile, config.seed)
    for keys, cells in _other_texts(stream, top, scale, bins, None):
        reservoir.offer(cells // bins * DECILES + table[cells] - 1, keys)
    return reservoir.chosen()


def _other_texts(
    stream: ChunkStream, top: PairIndex, scale: np.ndarray, bins: int, desc: str | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per batch, the (feature, text) pairs where the feature fires outside its top-K texts:
    their pair keys and histogram cells (feature * bins + the bin of the text's max)."""
    for offset, _, texts in stream.batches(desc, tokens=False):
        coo = texts.tocoo()
        rest = ~top.contains(coo.row, coo.col, offset, texts.shape[0])
        rows, cols = coo.row[rest], coo.col[rest]
        keys = cols.astype(np.int64) * top.n_texts + offset + rows
        yield keys, histogram_cells(cols, coo.data[rest], scale, bins)


def _fourth_pass(
    stream: ChunkStream,
    layout: TextLayout,
    pairs: PairIndex,
    max_act: np.ndarray,
    bins: int,
    desc: str | None,
) -> tuple[np.ndarray, ExampleHits]:
    """Pass 4: every feature's activation histogram (bins up to its max activation, known
    from pass 1) and the per-token activations of the chosen examples."""
    d = len(max_act)
    hist = np.zeros(d * bins, dtype=np.int32)  # counts per cell stay far below 2**31
    scale = bin_scale(max_act, bins)
    hit_keys, hit_pos, hit_val = [], [], []
    for offset, tokens, texts in stream.batches(desc):
        coo = tokens.tocoo()
        count_cells(hist, histogram_cells(coo.col, coo.data, scale, bins))
        lens = layout.lengths[offset : offset + texts.shape[0]]
        keys, pos, val = _batch_hits(coo, lens, offset, pairs)
        hit_keys.append(keys)
        hit_pos.append(pos)
        hit_val.append(val)
    hit_keys, hit_pos, hit_val = (
        np.concatenate(a) if a else np.zeros(0) for a in (hit_keys, hit_pos, hit_val)
    )
    sort = np.lexsort((hit_pos, hit_keys))
    return hist, ExampleHits(hit_keys[sort], hit_pos[sort], hit_val[sort])


def _batch_hits(
    coo: sp.coo_matrix, lens: np.ndarray, offset: int, pairs: PairIndex
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The token activations of one batch that belong to a chosen example: their pair keys,
    token positions inside their text, and values. Token rows of a batch are its texts'
    tokens back to back (lens), so a row maps to a text and a position by cumulative sums."""
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    local_text = np.repeat(np.arange(len(lens)), lens)[coo.row]
    hit = pairs.contains(local_text, coo.col, offset, len(lens))
    text, col = local_text[hit], coo.col[hit]
    keys = col.astype(np.int64) * pairs.n_texts + offset + text
    return keys, coo.row[hit] - starts[text], coo.data[hit]


def _concept_means(first: FirstPass) -> np.ndarray:
    """[d, concepts, 2]: every feature's mean per-text max activation over each concept's
    texts and the share of those texts it fires in (0 for a concept without texts)."""
    n = np.maximum(first.concept_n, 1)[:, None]
    return np.stack([first.concept_sum / n, first.concept_fire / n], axis=-1).transpose(1, 0, 2)


def _feature_rows(
    sae_id: str,
    first: FirstPass,
    quantiles: np.ndarray,
    quantile_names: list[str],
    per_concept: np.ndarray,
    names: list[str],
    examples: list[bytes | None],
) -> Iterator[dict[str, Any]]:
    """One Feature mapping per feature, made as they are written, from plain Python lists of
    one block of features at a time (indexing numpy arrays per feature would cost more than
    everything else here)."""
    n_fire_l, total_l, max_l = first.n_fire.tolist(), first.total.tolist(), first.max_act.tolist()
    for a in range(0, len(examples), ROW_BATCH):
        q_block = quantiles[a : a + ROW_BATCH].tolist()
        c_block = per_concept[a : a + ROW_BATCH].tolist()
        for f in range(a, min(a + ROW_BATCH, len(examples))):
            yield dict(
                sae_id=sae_id,
                index=f,
                n_fire=n_fire_l[f],
                firing_rate=n_fire_l[f] / max(first.n_tokens, 1),
                mean_act=total_l[f] / n_fire_l[f] if n_fire_l[f] else 0.0,
                max_act=max_l[f],
                quantiles=dict(zip(quantile_names, q_block[f - a], strict=True)),
                concept_stats=dict(zip(names, c_block[f - a], strict=True)),
                examples=examples[f],
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
