"""Finalize's vectorised steps against their per-feature definitions, on random data: the
examples blobs byte for byte against `pack_examples`, the sparse histogram against a dense
bincount, the streaming decile sample against one pass over everything."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from safesail.collection.finalize import _update_top_k
from safesail.collection.histograms import bin_scale, count_cells, histogram_cells
from safesail.db.tables import Feature
from safesail.features.blobs import ExampleHits, example_blobs
from safesail.features.examples import (
    DECILES,
    DecileReservoir,
    _by_group_then_priority,
    decile_table,
    feature_examples,
    pack_examples,
    pair_priority,
)


def _reference_blobs(d, pair_keys, pair_kinds, hits, order, lengths):
    """The per-feature loop finalize used to run: one pack_examples call per feature."""
    n_texts = len(order)
    out = []
    for f in range(d):
        mine = np.flatnonzero(pair_keys // n_texts == f)
        if not len(mine):
            out.append(None)
            continue
        keys = pair_keys[mine]
        start = np.searchsorted(hits.keys, keys, side="left")
        end = np.searchsorted(hits.keys, keys, side="right")
        pos = keys % n_texts
        out.append(
            pack_examples(
                np.asarray(order)[pos],
                pair_kinds[mine],
                np.array([lengths[order[p]] for p in pos]),
                np.concatenate([start, [end[-1]]]) - start[0],
                hits.pos[start[0] : end[-1]],
                hits.val[start[0] : end[-1]],
            )
        )
    return out


def test_example_blobs_are_byte_identical():
    rng = np.random.default_rng(0)
    d, n_texts = 50, 30
    order = list(rng.permutation(np.arange(100, 100 + n_texts)))
    lengths = {t: int(rng.integers(3, 9)) for t in order}
    pair_keys = np.sort(rng.choice(d * n_texts, 120, replace=False))  # some features have none
    pair_kinds = rng.integers(0, 11, len(pair_keys)).astype(np.int8)
    keys, pos = [], []
    for key in pair_keys:
        length = lengths[order[key % n_texts]]
        tokens = np.sort(rng.choice(length, int(rng.integers(1, length + 1)), replace=False))
        keys += [key] * len(tokens)
        pos += list(tokens)
    hits = ExampleHits(np.array(keys), np.array(pos), rng.random(len(keys)).astype(np.float32))
    got = example_blobs(
        d, pair_keys, pair_kinds, hits, order, np.array([lengths[t] for t in order])
    )
    expected = _reference_blobs(d, pair_keys, pair_kinds, hits, order, lengths)
    assert got == expected
    assert sum(b is None for b in got) > 0 and sum(b is not None for b in got) > 10
    examples = feature_examples(Feature(sae_id="s", index=0, examples=next(b for b in got if b)))
    assert examples and all(len(e.activations) >= 3 for e in examples)


def test_histogram_cells_match_a_dense_bincount():
    d, bins = 40, 16
    tokens = sp.random(200, d, density=0.1, random_state=2, dtype=np.float32).tocoo()
    max_act = np.asarray(tokens.max(axis=0).todense()).ravel()
    scale = bin_scale(max_act, bins)
    dense = np.bincount(
        tokens.col * bins
        + np.minimum((tokens.data * scale[tokens.col]).astype(np.int64), bins - 1),
        minlength=d * bins,
    )
    hist = np.zeros(d * bins, dtype=np.int32)
    count_cells(hist, histogram_cells(tokens.col, tokens.data, scale, bins))
    assert (hist == dense).all() and hist.sum() == tokens.nnz


def test_decile_reservoir_draws_the_same_sample_in_any_chunking():
    """Streaming the pairs in random chunks and orders keeps, per group, exactly the
    per_decile pairs of smallest priority over all of them (what one pass over everything
    would keep), and every decile group of 1..10 is filled up to per_decile."""
    rng = np.random.default_rng(1)
    d, per_decile, n = 30, 2, 4000
    keys = rng.choice(10**6, n, replace=False).astype(np.int64)
    groups = (keys // 1000 % d) * DECILES + rng.integers(0, DECILES, n)
    priority = pair_priority(keys, seed=7)
    expected = set()
    for g in np.unique(groups):
        mine = np.flatnonzero(groups == g)
        expected |= set(keys[mine[np.argsort(priority[mine])[:per_decile]]].tolist())
    for trial in range(3):
        reservoir = DecileReservoir(d, per_decile, seed=7)
        order = rng.permutation(n)
        for part in np.array_split(order, [1, 2, 50, 1000, 3000] if trial else [n]):
            reservoir.offer(groups[part], keys[part])
        got, kinds = reservoir.chosen()
        assert set(got.tolist()) == expected
        kind_of = dict(zip(keys.tolist(), (groups % DECILES + 1).tolist(), strict=True))
        assert [kind_of[k] for k in got.tolist()] == kinds.tolist()
    assert len(set(pair_priority(keys, 0).tolist())) == n  # no ties to break
    assert not (pair_priority(keys, 0) == pair_priority(keys, 1)).any()


def test_decile_table_cuts_ranks_into_tenths():
    """One text per bin: the text of rank r of n lies in decile floor(10 (r + 1/2) / n) + 1;
    texts sharing a bin share the decile of the bin's middle rank."""
    bins = 64
    hist = np.zeros((3, bins), dtype=np.int32)
    hist[0, :40] = 1  # 40 texts, one per bin: 4 per decile
    hist[1, [3, 9, 60]] = 1  # 3 texts: the lowest, middle and highest tenths
    hist[2, 5] = 7  # all in one bin: one decile
    table = decile_table(hist)
    assert table[0, :40].tolist() == [r // 4 + 1 for r in range(40)]
    assert table[1, [3, 9, 60]].tolist() == [2, 6, 9]
    assert table[2, 5] == 6


def test_packed_group_order_is_lexsorts():
    """The one-key sort of the reservoir orders pairs exactly as the two-key lexsort, also
    when packing cannot separate them (equal top priority bits, a group beyond 2**24)."""
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 5000, 20_000)
    priority = pair_priority(rng.choice(10**9, 20_000, replace=False), seed=0)
    expected = np.lexsort((priority, groups))
    np.testing.assert_array_equal(_by_group_then_priority(groups, priority), expected)
    tied = priority.copy()
    tied[1] = (tied[0] & ~np.uint64(0xFFFFFF)) | np.uint64(5)  # same top 40 bits as pair 0
    groups[1] = groups[0]
    for g in (groups, groups + (1 << 24)):
        np.testing.assert_array_equal(_by_group_then_priority(g, tied), np.lexsort((tied, g)))


def test_top_k_merge_keeps_the_earliest_of_tied_texts_in_any_batching():
    """Streaming top-K over texts whose maxima tie often (texts sharing a prefix) keeps, per
    feature, the K best by activation and then position, whatever the batch boundaries."""
    rng = np.random.default_rng(5)
    n, d, k = 300, 40, 6
    dense = rng.choice([0.0, 0.0, 0.5, 1.0, 1.5], size=(n, d)).astype(np.float32)
    expected = []
    for f in range(d):
        ranked = sorted(range(n), key=lambda p: (-dense[p, f], p))[:k]
        expected.append(sorted(p for p in ranked if dense[p, f] > 0))
    for cuts in ([], [1, 7, 8, 100, 250], list(range(3, n, 17))):
        vals, pos, start = torch.zeros((0, d)), torch.zeros((0, d), dtype=torch.long), 0
        for part in np.split(np.arange(n), cuts):
            vals, pos = _update_top_k(vals, pos, sp.csr_matrix(dense[part]), start, k)
            start += len(part)
        got = [sorted(pos[:, f][vals[:, f] > 0].tolist()) for f in range(d)]
        assert got == expected
