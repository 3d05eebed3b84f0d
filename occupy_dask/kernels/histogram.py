"""Histogram counts and bin lookups on blocks (ALGORITHM.md sections 6 and 7).

The 1000 equal bins over ``[lo, hi]`` have float32 edges computed in double precision and
rounded once (the way numpy 1.x builds the edges of a float32 histogram; numpy 2 accumulates
them in float32, which moves some edges by an ulp). A voxel's bin is decided by comparing it
with those edges, so per-block counts over a common range add up to the exact whole-array
histogram whatever the chunking.
"""

from __future__ import annotations

import numpy as np

N_BINS = 1000


def histogram_edges(lo: float, hi: float, n_bins: int = N_BINS) -> np.ndarray:
    """``n_bins + 1`` float32 edges of equal bins over ``[lo, hi]``."""
    return np.linspace(float(np.float32(lo)), float(np.float32(hi)), n_bins + 1).astype(np.float32)


def histogram_counts(values: np.ndarray, lo: float, hi: float, n_bins: int = N_BINS) -> np.ndarray:
    """Counts (int64) of float32 ``values`` in the bins of :func:`histogram_edges`; values outside
    ``[lo, hi]`` are not counted."""
    values = np.asarray(values, dtype=np.float32).ravel()
    edges = histogram_edges(lo, hi, n_bins)
    values = values[(values >= edges[0]) & (values <= edges[-1])]
    return np.bincount(bin_index(values, edges), minlength=n_bins).astype(np.int64)


def density_from_counts(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Probability density exactly as ``np.histogram(..., density=True)`` computes it."""
    db = np.array(np.diff(edges), float)
    return counts / db / counts.sum()


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value by its edges (``edges[i] <= v < edges[i+1]``, last bin closed),
    clipped to ``[0, n_bins - 1]``: a float32 guess, then corrected against the edges."""
    n = edges.size - 1
    values = np.asarray(values, dtype=np.float32)
    lo = edges[0]
    span = edges[-1] - lo
    if span <= 0:
        return np.zeros(values.shape, dtype=np.intp)
    guess = (values - lo) * (np.float32(n) / span)
    idx = np.clip(np.nan_to_num(guess, nan=0.0), 0, n - 1).astype(np.intp)
    idx -= values < edges[idx]
    np.clip(idx, 0, n - 1, out=idx)
    idx += (values >= edges[idx + 1]) & (idx != n - 1)
    return idx


def confidence_lookup(lp: np.ndarray, table: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Confidence per voxel: the content fraction of the voxel's histogram bin, in [0, 1]."""
    return np.clip(table[bin_index(lp, edges)], 0.0, 1.0).astype(np.float32)


def confidence_lookup_reference(lp: np.ndarray, table: np.ndarray, lp_min: float, lp_max: float) -> np.ndarray:
    """The reference's lookup (ALGORITHM.md 11): ``int(u*1000 - 1)`` of the range-scaled map,
    where -1 (the minimum voxel) wraps to the last bin."""
    lp = np.asarray(lp, dtype=np.float32)
    span = np.float32(lp_max) - np.float32(lp_min)
    u = lp / span
    u -= np.float32(lp_min) / span
    idx = (u * table.size - 1).astype(np.intp)
    return np.clip(table[idx], 0.0, 1.0).astype(np.float32)
