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

from safesail.db.tables import Feature

TOP = 0
"""Example kind of a top-activating context; kinds 1..10 are activation deciles (1 = lowest)."""


class Example(NamedTuple):
    """One context of a feature with its per-token activations."""

    text_id: int
    kind: int
    max_act: float
    activations: np.ndarray  # one value per context token


def peak_window(
    acts: list[float] | np.ndarray, length: int, before: int, after: int
) -> tuple[int, int]:
    """[lo, hi) of the segment shown around a context's peak activation: up to `before`
    tokens before the peak and `after` after it. Every view of a context (the reference
    labels, Label Studio tasks, the reader, the explainer's prompts) cuts the same way, so a
    segment judged in one place is the segment shown in another."""
    peak = int(np.argmax(acts)) if len(acts) else 0
    return max(0, peak - before), min(length, peak + after + 1)


DECILES = 10
"""Activation deciles a feature's non-top examples are drawn from (kinds 1..DECILES)."""


def decile_table(hist: np.ndarray) -> np.ndarray:
    """[d, bins] int8: the decile (1..10) of every histogram bin of every feature, where the
    histogram counts each feature's non-top activating texts by their max activation.

    A bin's decile is the tenth of the feature's texts its middle rank falls in (its texts
    ranked by activation, the bin's own texts at the middle of their run), so a decile is a
    tenth of the texts, as `np.array_split` would cut them, up to the texts of one bin
    (1/bins of the feature's max activation) that share a decile. A histogram and not the
    texts themselves: it has a fixed size, so finalize needs no per-text matrix of the whole
    corpus (36k texts x 65k features held 9 GB before)."""
    d, bins = hist.shape
    out = np.zeros((d, bins), dtype=np.int8)
    for a in range(0, d, 8192):  # cumulative counts of one block of features at a time
        block = hist[a : a + 8192].astype(np.int64)
        cum = block.cumsum(axis=1)
        n = np.maximum(cum[:, -1:], 1)
        middle = cum - block / 2  # texts ranked below the bin's middle
        out[a : a + 8192] = np.minimum(middle * DECILES // n, DECILES - 1).astype(np.int8) + 1
    return out


def pair_priority(keys: np.ndarray, seed: int) -> np.ndarray:
    """A uniform pseudo-random uint64 per (feature, text) pair key (splitmix64 of key and
    seed): the sample of a decile is its pairs of smallest priority, the same whatever order
    or chunking the pairs arrive in, so a rerun or a resumed finalize draws the same texts."""
    z = keys.astype(np.uint64) + np.uint64((seed + 1) * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class DecileReservoir:
    """The random decile examples of every feature, drawn while the texts stream past:
    per (feature, decile) group the `per_decile` pairs of smallest `pair_priority` so far.
    Its size is d x 10 x per_decile, whatever the corpus size."""

    def __init__(self, d: int, per_decile: int, seed: int) -> None:
        self.per_decile, self.seed = per_decile, seed
        empty = np.iinfo(np.uint64).max
        self.priority = np.full((d * DECILES, per_decile), empty, dtype=np.uint64)
        self.keys = np.full((d * DECILES, per_decile), -1, dtype=np.int64)

    def offer(self, groups: np.ndarray, keys: np.ndarray) -> None:
        """Pairs (group = feature * 10 + decile - 1, pair key) that may enter the sample."""
        p = self.per_decile
        if not p or not len(keys):
            return
        priority = pair_priority(keys, self.seed)
        # Only a pair below its group's p-th smallest priority so far can enter (priorities
        # are distinct: splitmix64 is a bijection of the key). Once the groups fill, that
        # drops almost every pair before the sort: most of a long corpus's offers.
        enter = priority < self.priority[groups, -1]
        groups, keys, priority = groups[enter], keys[enter], priority[enter]
        if not len(keys):
            return
        order = _by_group_then_priority(groups, priority)
        groups, keys, priority = groups[order], keys[order], priority[order]
        first = np.r_[True, groups[1:] != groups[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(groups)), 0))
        rank = np.arange(len(groups)) - start
        keep = rank < p  # a group's best p of this chunk: no other can enter the sample
        groups, keys, priority, rank = groups[keep], keys[keep], priority[keep], rank[keep]
        touched, slot = np.unique(groups, return_inverse=True)
        new_pri = np.full((len(touched), p), np.iinfo(np.uint64).max, dtype=np.uint64)
        new_key = np.full((len(touched), p), -1, dtype=np.int64)
        new_pri[slot, rank], new_key[slot, rank] = priority, keys
        both_pri = np.hstack([self.priority[touched], new_pri])
        both_key = np.hstack([self.keys[touched], new_key])
        best = np.argsort(both_pri, axis=1, kind="stable")[:, :p]
        self.priority[touched] = np.take_along_axis(both_pri, best, axis=1)
        self.keys[touched] = np.take_along_axis(both_key, best, axis=1)

    def chosen(self) -> tuple[np.ndarray, np.ndarray]:
        """The sampled pair keys and their kinds (deciles 1..10)."""
        taken = self.keys >= 0
        kinds = np.broadcast_to((np.arange(len(self.keys)) % DECILES + 1)[:, None], taken.shape)
        return self.keys[taken], kinds[taken].astype(np.int8)


def _by_group_then_priority(groups: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """The order of pairs by (group, priority), as `np.lexsort((priority, groups))` gives it,
    from one sort of a packed key: the group in the top 24 bits, the priority's top 40 bits
    below (one sort instead of two; bench/README.md, "Choices in the code"). When packing
    cannot tell two pairs apart (a group beyond 2**24, or equal top bits, about one in 2**40
    per pair of a group) it falls back to the two-key sort, so the order is always exactly
    lexsort's."""
    if len(groups) and int(groups.max()) < 1 << 24:
        packed = (groups.astype(np.uint64) << np.uint64(40)) | (priority >> np.uint64(24))
        order = np.argsort(packed)
        ranked = packed[order]
        if not np.any(ranked[1:] == ranked[:-1]):
            return order
    return np.lexsort((priority, groups))


def choose_examples(
    top_keys: np.ndarray, decile_keys: np.ndarray, decile_kinds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The (feature, text) pairs kept as examples, as sorted keys feature * n_texts + text, with
    their kind: TOP for the top-K, else the activation decile (1..10) of a random sample
    drawn from the remaining activating texts (delphi-style), per_decile per decile."""
    keys = np.concatenate([top_keys, decile_keys])
    kinds = np.concatenate([np.full(len(top_keys), TOP, dtype=np.int8), decile_kinds])
    sort = np.argsort(keys, kind="stable")
    return keys[sort], kinds[sort]


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
