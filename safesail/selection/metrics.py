"""Per-feature statistics of a max-activation matrix, shared by SAE scoring and triage.

Every function takes ``X``: one row per text, one column per SAE feature, holding the
feature's MAX activation over the text's tokens (0 where it never fires). ``X`` may be a
scipy sparse matrix/array or a dense numpy array; it is never densified as a whole.

Both halves of selection (``selection.score``: which SAE; ``triage.text``: which of its
features) rank features by the same AUROC and firing rates on the same labelled texts, so
those and the label handling live here once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from safesail.errors import SafesailError

if TYPE_CHECKING:
    from safesail.selection.config import Contrast


BENIGN = "benign"


@runtime_checkable
class TextMaxima(Protocol):
    """``X`` read a group of features at a time: what selection, triage and the explainer
    need of every text's maxima, never the whole matrix at once.

    Every statistic here is per feature (a column of ``X``), so computing it over column
    blocks gives exactly what it gives over the whole matrix, while a workspace's stored
    maxima (``safesail.collection.chunks.StoredTextMaxima``) hold no more than one block,
    however large the corpus. A plain matrix is one block (``as_maxima``).
    """

    @property
    def shape(self) -> tuple[int, int]:
        """[n_texts, d_sae]."""
        ...

    def feature_blocks(self) -> Iterator[tuple[int, sp.csc_array]]:
        """(first feature, the [n_texts, width] block of consecutive features from it), in
        feature order, covering every feature once."""
        ...

    def columns(self, requests: Sequence[np.ndarray]) -> Iterator[sp.csc_array]:
        """For each array of feature indices, the [n_texts, len] matrix of those columns in
        that order, one request after another."""
        ...


class MatrixMaxima:
    """A matrix held in memory, as ``TextMaxima``: a single block."""

    def __init__(self, X: object) -> None:
        self.matrix = as_sparse(X, "csc")

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def feature_blocks(self) -> Iterator[tuple[int, sp.csc_array]]:
        yield 0, self.matrix

    def columns(self, requests: Sequence[np.ndarray]) -> Iterator[sp.csc_array]:
        for features in requests:
            yield self.matrix[:, np.asarray(features, dtype=np.int64)]


def as_maxima(X: object) -> TextMaxima:
    """``X`` as ``TextMaxima``: itself when it reads blocks, else the matrix validated once
    (``as_sparse``) and held as one block."""
    return X if isinstance(X, TextMaxima) else MatrixMaxima(X)


def as_sparse(X: object, fmt: str) -> sp.csr_array | sp.csc_array:
    """A float copy of ``X`` in ``fmt`` without stored zeros, validated once for all callers.

    A copy, because removing stored zeros must not mutate the caller's matrix; removing
    them matters because the AUROC treats every zero as one tied block.
    """
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D [n_texts, d_sae], got shape {X.shape}")
    out = (sp.csr_array if fmt == "csr" else sp.csc_array)(X, dtype=np.float64, copy=True)
    out.eliminate_zeros()
    if not np.isfinite(out.data).all():
        raise ValueError("X holds NaN or infinite activations")
    return out


class SortedColumns:
    """A matrix's nonzeros sorted by (column, value) once, so that the AUROC of every column
    for any labelling of any subset of rows costs O(nnz) and no sort.

    Selection scores 12 concepts x (1 + 3 folds) per SAE on one matrix and triage 12 more:
    sorting once instead of per call is most of their time. Keeping a subset of rows keeps the
    nonzeros' order, so ranks among the subset come from positions, not a new sort.
    """

    def __init__(self, X: object) -> None:
        Xc = as_sparse(X, "csc")
        self.n, self.d = Xc.shape
        nnz_per_col = np.diff(Xc.indptr)
        # Sort by (column, value): by value first, then stably by column. This is several
        # times faster than np.lexsort; with uint16 column ids the stable pass is a radix sort.
        cols = np.repeat(
            np.arange(self.d, dtype=np.uint16 if self.d <= 1 << 16 else np.int64), nnz_per_col
        )
        by_value = np.argsort(Xc.data)
        order = by_value[np.argsort(cols[by_value], kind="stable")]
        self.values, self.cols, self.rows = Xc.data[order], cols[order], Xc.indices[order]

    def auroc(self, positive: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact Mann-Whitney AUROC of every column for ``positive`` (a bool per row of the
        matrix) vs the other rows, over ``rows`` only (a bool mask; None: all rows).

        Ties get average ranks, as in ``sklearn.metrics.roc_auc_score``. SAE activations are
        mostly zero, so only the nonzeros are ranked and the zeros are handled as a single
        tied block whose average rank is known in closed form. Negative values are ranked
        correctly too (they sit below the zero block).
        """
        pos = np.asarray(positive)
        if pos.dtype != bool or pos.shape != (self.n,):
            raise ValueError(
                f"positive must be a bool array of shape ({self.n},), got {pos.dtype} {pos.shape}"
            )
        member = np.ones(self.n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        keep = member[self.rows]
        values, cols, is_pos = self.values[keep], self.cols[keep], pos[self.rows[keep]]
        n = int(member.sum())
        n1 = int((pos & member).sum())
        n0 = n - n1
        if n1 == 0 or n0 == 0:
            raise ValueError(f"AUROC needs both classes, got {n1} positive and {n0} negative rows")
        d = self.d
        nnz_per_col = np.bincount(cols, minlength=d)
        indptr = np.concatenate([[0], np.cumsum(nnz_per_col)])

        # Average 1-based rank among the column's nonzeros: mean of the first and last
        # position of each run of equal (column, value).
        k = len(values)
        in_col = np.arange(k) - indptr[cols]
        starts = np.ones(k, dtype=bool)
        starts[1:] = (values[1:] != values[:-1]) | (cols[1:] != cols[:-1])
        run = np.cumsum(starts) - 1
        run_starts = np.flatnonzero(starts)
        run_ends = np.append(run_starts[1:], k) - 1
        rank = (in_col[run_starts] + in_col[run_ends])[run] / 2.0 + 1.0

        n_zero = n - nnz_per_col
        n_below_zero = np.bincount(cols[values < 0], minlength=d)
        rank += np.where(values > 0, n_zero[cols], 0)
        zero_rank = n_below_zero + (n_zero + 1) / 2.0

        # float even when no positive row has a nonzero (bincount of nothing is int64)
        rank_sum = np.bincount(cols[is_pos], weights=rank[is_pos], minlength=d).astype(np.float64)
        pos_zeros = n1 - np.bincount(cols[is_pos], minlength=d)
        rank_sum += pos_zeros * zero_rank
        return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def auroc_per_feature(X: object, positive: np.ndarray) -> np.ndarray:
    """Exact AUROC of every column of ``X`` for ``positive`` vs the other rows (one labelling:
    ``SortedColumns`` serves many). Cost is O(nnz log nnz), independent of the zero count."""
    return SortedColumns(X).auroc(positive)


def label_sets(concepts: Sequence[Sequence[str]], n_texts: int) -> list[frozenset[str]]:
    if len(concepts) != n_texts:
        raise ValueError(f"got {len(concepts)} label lists for {n_texts} rows of X")
    out = []
    for i, labels in enumerate(concepts):
        if isinstance(labels, str):
            # A bare string is a Sequence[str] too; iterating it would yield letters.
            raise ValueError(f"labels of text {i} must be a list of concept names, got {labels!r}")
        names = frozenset(labels)
        if BENIGN in names and len(names) > 1:
            others = sorted(names - {BENIGN})
            raise SafesailError(f"text {i} is labelled {BENIGN!r} and also {others} — keep one of them")
        out.append(names)
    return out


def concept_names(safety_concepts: Sequence[str]) -> list[str]:
    if isinstance(safety_concepts, str):
        raise ValueError(f"safety_concepts must be a list of names, got {safety_concepts!r}")
    names = list(dict.fromkeys(safety_concepts))
    if not names:
        raise ValueError("safety_concepts is empty")
    if BENIGN in names:
        raise ValueError(f"{BENIGN!r} is the contrast class, not a safety concept")
    return names


def concept_mask(labels: list[frozenset[str]], name: str) -> np.ndarray:
    return np.fromiter((name in s for s in labels), dtype=bool, count=len(labels))


def negatives(pos: np.ndarray, benign: np.ndarray, contrast: Contrast) -> np.ndarray:
    """The texts a concept is contrasted with.

    "rest" (the default) keeps every text without the concept. Then a feature that merely
    tracks the style safety prompts share (requests, chat framing) does not look specific to
    any one concept, which it would against benign text of another style.
    """
    return ~pos if contrast == "rest" else benign


def fire_matrix(X: sp.csr_array, fire_fraction: float) -> sp.csr_array:
    """1 where a feature's activation on a text exceeds fire_fraction of its own max."""
    fires = X.copy()
    peak = X.max(axis=0).toarray().ravel() if X.shape[0] else np.zeros(X.shape[1])
    fires.data = (fires.data > fire_fraction * peak[fires.indices]).astype(np.float64)
    return fires


def feature_specificity(
    auroc: np.ndarray, frac_pos: np.ndarray, frac_neg: np.ndarray
) -> np.ndarray:
    return np.clip(2.0 * auroc - 1.0, 0.0, None) * frac_pos * (1.0 - frac_neg)
