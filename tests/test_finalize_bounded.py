"""Finalize's vectorised steps against their per-feature definitions, on random data: the
examples blobs byte for byte against `pack_examples`, the sparse histogram against a dense
bincount."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from safesail.example_blobs import ExampleHits, example_blobs
from safesail.examples import feature_examples, pack_examples
from safesail.finalize import _histogram_cells
from safesail.storage import Feature


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
    got = example_blobs(d, pair_keys, pair_kinds, hits, order, lengths)
    expected = _reference_blobs(d, pair_keys, pair_kinds, hits, order, lengths)
    assert got == expected
    assert sum(b is None for b in got) > 0 and sum(b is not None for b in got) > 10
    examples = feature_examples(Feature(sae_id="s", index=0, examples=next(b for b in got if b)))
    assert examples and all(len(e.activations) >= 3 for e in examples)


def test_histogram_cells_match_a_dense_bincount():
    d, bins = 40, 16
    tokens = sp.random(200, d, density=0.1, random_state=2, dtype=np.float32).tocoo()
    max_act = np.asarray(tokens.max(axis=0).todense()).ravel()
    scale = np.where(max_act > 0, bins / np.maximum(max_act, 1e-30), 0)
    dense = np.bincount(
        tokens.col * bins
        + np.minimum((tokens.data * scale[tokens.col]).astype(np.int64), bins - 1),
        minlength=d * bins,
    )
    hist = np.zeros(d * bins, dtype=np.int32)
    cells, counts = _histogram_cells(tokens, scale, bins)
    hist[cells] += counts.astype(np.int32)
    assert (hist == dense).all() and hist.sum() == tokens.nnz
