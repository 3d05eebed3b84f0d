"""Per-voxel stages of the fused per-chunk pass: scale, noise-level recalibration, and the
geometry of the inscribed ellipsoid (ALGORITHM.md sections 5-7)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def moments(values):  # pragma: no cover
    """``(sum, sum of squares, min, max)`` of a 1D array in one pass, sums in float64."""
    total = 0.0
    squares = 0.0
    lo = np.inf
    hi = -np.inf
    for v in values:
        x = np.float64(v)
        total += x
        squares += x * x
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    return total, squares, lo, hi


@numba.njit(cache=True, nogil=True)
def _masked_sum(scale, data, value):  # pragma: no cover
    count = 0
    total = 0.0
    nz, ny, nx = scale.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if scale[z, y, x] == value:
                    count += 1
                    total += np.float64(data[z, y, x])
    return count, total


def masked_sum(scale: np.ndarray, data: np.ndarray, value: float) -> tuple[int, float]:
    """``(count, float64 sum of data)`` over the voxels where ``scale == value`` (same-shape
    blocks; ``data`` may be a view into a padded block)."""
    count, total = _masked_sum(scale, data, np.float32(value))
    return int(count), float(total)


def local_scale(max_filtered: np.ndarray, s_max: float, out: np.ndarray | None = None) -> np.ndarray:
    """``clip(s_i / s_max, 0, 1)`` in float32 (into ``out``, which may be ``max_filtered``)."""
    out = np.divide(max_filtered, np.float32(s_max), out=out, dtype=np.float32)
    return np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def recalibrate_noise_level(scale: np.ndarray, confidence_limit: float, out: np.ndarray | None = None) -> np.ndarray:
    """``--nlrc``: stretch ``[confidence_limit, 1]`` onto ``[0, 1]`` (into ``out``, may be ``scale``)."""
    lim = np.float32(confidence_limit)
    out = np.subtract(scale, lim, out=out, dtype=np.float32)
    np.divide(out, np.float32(1.0) - lim, out=out)
    return np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def inscribed_ellipsoid(shape, start, stop) -> np.ndarray:
    """Boolean block ``[start, stop)`` of the ellipsoid inscribed in a box of ``shape`` voxels
    (voxel centres at ``i + 0.5``; semi-axes half the box)."""
    terms = []
    for n, a, b in zip(shape, start, stop):
        half = n / 2.0
        terms.append(((np.arange(a, b) + 0.5 - half) / half) ** 2)
    total = terms[0][:, None, None] + terms[1][None, :, None] + terms[2][None, None, :]
    return total <= 1.0
