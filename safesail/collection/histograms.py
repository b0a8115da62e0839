"""Per-feature activation histograms in one flat [d * bins] array: bins up to each feature's
max activation, filled one batch at a time, read back as quantiles. A flat array of counts
keeps memory fixed per feature whatever the corpus size.
"""

from __future__ import annotations

import numpy as np

from safesail.config import CollectConfig


def bin_scale(max_act: np.ndarray, bins: int) -> np.ndarray:
    """Per feature, activation -> bin: histograms of max_act / bins wide (0 for a feature
    that never fires)."""
    return np.where(max_act > 0, bins / np.maximum(max_act, 1e-30), 0)


def count_cells(hist: np.ndarray, cells: np.ndarray) -> None:
    """Add one batch's histogram cells to a flat [d * bins] histogram. Counting only the
    cells the batch touches keeps each batch's cost in its own size, not d * bins."""
    touched, counts = np.unique(cells, return_counts=True)
    hist[touched] += counts.astype(np.int32)


def histogram_cells(
    cols: np.ndarray, values: np.ndarray, scale: np.ndarray, bins: int
) -> np.ndarray:
    """Histogram cells feature * bins + bin of activations of the given features (scale from
    `bin_scale`), the top bin closed, so that each feature's max falls inside it."""
    bin_index = np.minimum((values * scale[cols]).astype(np.int64), bins - 1)
    return cols.astype(np.int64) * bins + bin_index


def histogram_quantiles(
    hist: np.ndarray, n_fire: np.ndarray, max_act: np.ndarray, config: CollectConfig
) -> np.ndarray:
    """[d, quantiles]: every feature's activation at each quantile (the upper edge of the
    histogram bin the quantile falls in), 0 for features that never fire; vectorised over
    blocks of features (the cumulative counts of one block at a time, not of all d * bins)."""
    d, bins = len(n_fire), config.histogram_bins
    cells = hist.reshape(d, bins)
    out = np.zeros((d, len(config.quantiles)))
    for a in range(0, d, 8192):
        cum = cells[a : a + 8192].cumsum(axis=1)
        fire, peak = n_fire[a : a + 8192], max_act[a : a + 8192]
        for j, q in enumerate(config.quantiles):
            index = np.minimum((cum < (q * fire)[:, None]).sum(axis=1), bins - 1) + 1
            out[a : a + 8192, j] = np.where(fire > 0, index * (peak / bins), 0.0)
    return out
