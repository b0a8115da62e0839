"""The examples of a feature: its top-activating contexts and a sample from each activation
decile, with per-token activations; which texts are chosen, and how they are packed into (and
read back from) the feature row's ``examples`` blob.

Kept apart from collection (which needs torch and the model) because everything that shows or
judges a feature (the app, Label Studio tasks, the oracle, the reader, the explainer) reads
examples, and none of them should load torch to do so.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from safesail.config import CollectConfig
from safesail.storage import Feature

TOP = 0
"""Example kind of a top-activating context; kinds 1..10 are activation deciles (1 = lowest)."""


class Example(NamedTuple):
    """One context of a feature with its per-token activations."""

    text_id: int
    kind: int
    max_act: float
    activations: np.ndarray  # one value per context token


def choose_examples(
    top_vals: np.ndarray,
    top_pos: np.ndarray,
    per_text: sp.csc_matrix,
    config: CollectConfig,
    n_texts: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The (feature, text) pairs kept as examples, as sorted keys feature * n_texts + text, with
    their kind: TOP for the top-K, else the activation decile (1..10) of a random sample
    drawn from the remaining activating texts (delphi-style), per_decile per decile."""
    d = per_text.shape[1]
    is_top = top_vals > 0
    top_keys = np.sort((np.arange(d)[None, :] * n_texts + top_pos)[is_top])
    cols = np.repeat(np.arange(d), np.diff(per_text.indptr))
    entry_keys = cols.astype(np.int64) * n_texts + per_text.indices
    rest = ~in_sorted(entry_keys, top_keys)
    cols, keys, vals = cols[rest], entry_keys[rest], per_text.data[rest]
    keys_out, kinds_out = [top_keys], [np.full(len(top_keys), TOP, dtype=np.int8)]
    if config.per_decile and len(keys):
        # One float key per entry, column + value scaled into [0, 1): a single stable argsort
        # orders by activation within each feature (ties keep text order), far cheaper than a
        # multi-key lexsort over millions of entries.
        peak = np.zeros(d)
        np.maximum.at(peak, cols, vals)
        by_value = np.argsort(cols + vals / (peak[cols] * (1 + 1e-9)), kind="stable")
        cols, keys = cols[by_value], keys[by_value]
        counts = np.bincount(cols, minlength=d)
        rank = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
        n = counts[cols]
        q, r = n // 10, n % 10  # np.array_split into 10: the first r groups hold q + 1
        big = rank < (q + 1) * r
        decile = np.where(big, rank // (q + 1), r + (rank - (q + 1) * r) // np.maximum(q, 1)) + 1
        group = cols.astype(np.int64) * 11 + decile
        lottery = np.random.default_rng(config.seed).random(len(cols))
        pick = np.argsort(group + lottery, kind="stable")  # groups in order, shuffled inside
        group = group[pick]
        first = np.r_[True, group[1:] != group[:-1]]
        place = np.arange(len(group)) - np.maximum.accumulate(
            np.where(first, np.arange(len(group)), 0)
        )
        chosen = pick[place < config.per_decile]
        keys_out.append(keys[chosen])
        kinds_out.append(decile[chosen].astype(np.int8))
    keys_all, kinds_all = np.concatenate(keys_out), np.concatenate(kinds_out)
    sort = np.argsort(keys_all, kind="stable")
    return keys_all[sort], kinds_all[sort]


def in_sorted(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """keys in sorted_set, by binary search (np.isin sorts both sides every call)."""
    if not len(sorted_set):
        return np.zeros(len(keys), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    return sorted_set[where] == keys


def pack_examples(
    text: np.ndarray,
    kind: np.ndarray,
    length: np.ndarray,
    ptr: np.ndarray,
    pos: np.ndarray,
    val: np.ndarray,
) -> bytes:
    """One feature's examples as raw little-endian arrays behind a 2-int header.

    Thousands of features are packed per SAE; an npz per feature costs more than everything
    else in finalize, and these small arrays do not compress.
    """
    header = np.array([len(text), len(pos)], dtype="<i4")
    parts = (
        header,
        np.asarray(text, "<i4"),
        np.asarray(kind, "i1"),
        np.asarray(length, "<i4"),
        np.asarray(ptr, "<i4"),
        np.asarray(pos, "<i4"),
        np.asarray(val, "<f4"),
    )
    return b"".join(p.tobytes() for p in parts)


def unpack_examples(blob: bytes) -> dict[str, np.ndarray]:
    m, nnz = np.frombuffer(blob, "<i4", 2)
    out, at = {}, 8
    for name, dtype, count in (
        ("text", "<i4", m),
        ("kind", "i1", m),
        ("length", "<i4", m),
        ("ptr", "<i4", m + 1),
        ("pos", "<i4", nnz),
        ("val", "<f4", nnz),
    ):
        out[name] = np.frombuffer(blob, dtype, int(count), at)
        at += int(count) * np.dtype(dtype).itemsize
    return out


def feature_examples(feature: Feature) -> list[Example]:
    """Unpack a feature's examples: top-activating first (descending), then by decile."""
    return examples_of(feature.examples)


def examples_of(blob: bytes | None) -> list[Example]:
    """``feature_examples`` from the stored column alone, for readers that select columns
    instead of loading every Feature row as an object (triage over a whole SAE)."""
    if blob is None:
        return []
    a = unpack_examples(blob)
    out = []
    for i in range(len(a["text"])):
        acts = np.zeros(int(a["length"][i]), dtype=np.float32)
        acts[a["pos"][a["ptr"][i] : a["ptr"][i + 1]]] = a["val"][a["ptr"][i] : a["ptr"][i + 1]]
        out.append(
            Example(int(a["text"][i]), int(a["kind"][i]), float(acts.max(initial=0.0)), acts)
        )
    return sorted(out, key=lambda e: (e.kind, -e.max_act, e.text_id))
