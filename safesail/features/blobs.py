"""Every feature's examples blob built at once: finalize's last step, apart from it because it
is all offset arithmetic. The bytes are exactly those of `safesail.features.examples.pack_examples`
(a reader unpacks them with `unpack_examples`); building them without a Python call per
feature keeps finalize's cost in the number of examples, not of features.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ExampleHits(NamedTuple):
    """The nonzero token activations of the chosen examples, sorted by (pair key, token)."""

    keys: np.ndarray
    """feature * n_texts + position of each activation's (feature, text) pair."""
    pos: np.ndarray
    """Token index inside its text."""
    val: np.ndarray
    """The activation."""


def example_blobs(
    d: int,
    pair_keys: np.ndarray,
    pair_kinds: np.ndarray,
    hits: ExampleHits,
    order: list[int],
    length_of_pos: np.ndarray,
) -> list[bytes | None]:
    """Each feature's packed examples (None without any), byte for byte what pack_examples
    writes, for all features at once: every field of every blob is scattered into one buffer
    at offsets computed from the per-feature counts, then the buffer is cut into blobs.
    Pair keys and hits are sorted by feature, so each feature's share of both is one run.
    `length_of_pos` is the token count of the text at each position of `order`."""
    n_texts = len(order)
    pair_feature = pair_keys // n_texts
    with_examples = np.unique(pair_feature)
    m = np.bincount(pair_feature, minlength=d)[with_examples]  # pairs per feature
    first_pair = np.concatenate([[0], np.cumsum(m)[:-1]])
    hit_start = np.searchsorted(hits.keys, pair_keys, side="left")
    h0 = hit_start[first_pair]
    h1 = np.searchsorted(hits.keys, pair_keys[first_pair + m - 1], side="right")
    n = h1 - h0  # hits per feature
    size = 12 + 13 * m + 8 * n  # header, text, kind, length, ptr (m + 1), pos, val
    base = np.concatenate([[0], np.cumsum(size)[:-1]])
    at_text = base + 8
    at_kind = at_text + 4 * m
    at_length = at_kind + m
    at_ptr = at_length + 4 * m
    at_pos = at_ptr + 4 * (m + 1)
    at_val = at_pos + 4 * n
    buf = np.zeros(int(size.sum()), dtype=np.uint8)

    def put(starts: np.ndarray, values: np.ndarray, dtype: str) -> None:
        width = np.dtype(dtype).itemsize
        raw = np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(-1, width)
        buf[starts[:, None] + np.arange(width)] = raw

    feature_of_pair = np.repeat(np.arange(len(m)), m)
    j = np.arange(len(pair_keys)) - first_pair[feature_of_pair]  # index inside the feature
    text_pos = pair_keys % n_texts
    put(base, m, "<i4")
    put(base + 4, n, "<i4")
    put(at_text[feature_of_pair] + 4 * j, np.asarray(order, dtype=np.int64)[text_pos], "<i4")
    put(at_kind[feature_of_pair] + j, pair_kinds, "i1")
    put(at_length[feature_of_pair] + 4 * j, length_of_pos[text_pos], "<i4")
    put(at_ptr[feature_of_pair] + 4 * j, hit_start - h0[feature_of_pair], "<i4")
    put(at_ptr + 4 * m, n, "<i4")
    # every hit belongs to a chosen pair, so the features' hit runs tile hits end to end
    feature_of_hit = np.repeat(np.arange(len(m)), n)
    k = np.arange(len(feature_of_hit)) - (np.cumsum(n) - n)[feature_of_hit]
    put(at_pos[feature_of_hit] + 4 * k, hits.pos, "<i4")
    put(at_val[feature_of_hit] + 4 * k, hits.val, "<f4")
    data = buf.tobytes()
    blobs: list[bytes | None] = [None] * d
    ends = (base + size).tolist()
    for f, start, end in zip(with_examples.tolist(), base.tolist(), ends, strict=True):
        blobs[f] = data[start:end]  # one bytes object per row: the rows need them
    return blobs
