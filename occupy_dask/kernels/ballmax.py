"""Exact grey-scale maximum filter with a ball (or ellipsoid) footprint.

The footprint is a union of x-runs centred on the kernel centre, one per (dz, dy) row, so the
filter is the maximum over those rows of a 1D running maximum of half-width ``w``. Compiled
with numba; bit-identical to ``scipy.ndimage.maximum_filter(footprint=kernel)``.
"""

from __future__ import annotations

import numba
import numpy as np


def kernel_runs(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decompose a centred, x-symmetric footprint into rows ``(dz, dy, width index)``.

    Returns ``dz, dy, width_index`` (one entry per non-empty (dz, dy) row) and the distinct
    half-widths ``widths``; row ``r`` covers ``x - widths[width_index[r]] .. x + widths[...]``.
    """
    kernel = np.asarray(kernel, dtype=bool)
    if kernel.ndim != 3 or any(s % 2 == 0 for s in kernel.shape):
        raise ValueError(f"footprint must be 3D with odd sizes, got {kernel.shape}")
    if not np.array_equal(kernel, kernel[:, :, ::-1]):
        raise ValueError("footprint must be symmetric along x")
    cz, cy, cx = (s // 2 for s in kernel.shape)
    dz, dy, half = [], [], []
    for iz in range(kernel.shape[0]):
        for iy in range(kernel.shape[1]):
            row = kernel[iz, iy]
            if not row.any():
                continue
            xs = np.flatnonzero(row) - cx
            w = int(xs.max())
            if xs.size != 2 * w + 1:
                raise ValueError("every footprint row must be one run centred on x = 0")
            dz.append(iz - cz)
            dy.append(iy - cy)
            half.append(w)
    widths = np.array(sorted(set(half)), dtype=np.int64)
    width_index = np.searchsorted(widths, np.array(half, dtype=np.int64))
    return (
        np.array(dz, dtype=np.int64),
        np.array(dy, dtype=np.int64),
        width_index.astype(np.int64),
        widths,
    )


@numba.njit(cache=True, nogil=True)
def _ball_max_valid(padded, dz, dy, width_index, widths, hz, hy, hx, out):  # pragma: no cover
    zp_n, yp_n, _ = padded.shape
    z_n, y_n, x_n = out.shape
    n_w = widths.size
    depth = 2 * hz + 1
    # ring buffer of row maxima: for each of the last `depth` padded planes and each width
    ring = np.empty((depth, n_w, yp_n, x_n), dtype=padded.dtype)
    for zp in range(zp_n):
        slot = zp % depth
        for wi in range(n_w):
            w = widths[wi]
            for y in range(yp_n):
                for x in range(x_n):
                    c = x + hx
                    m = padded[zp, y, c - w]
                    for t in range(c - w + 1, c + w + 1):
                        v = padded[zp, y, t]
                        if v > m:
                            m = v
                    ring[slot, wi, y, x] = m
        if zp < depth - 1:
            continue
        z = zp - (depth - 1)
        for y in range(y_n):
            for x in range(x_n):
                out[z, y, x] = -np.inf
        for r in range(dz.size):
            s = (z + hz + dz[r]) % depth
            wi = width_index[r]
            for y in range(y_n):
                yy = y + hy + dy[r]
                for x in range(x_n):
                    v = ring[s, wi, yy, x]
                    if v > out[z, y, x]:
                        out[z, y, x] = v
    return out


def ball_max_valid(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Maximum filter of ``padded`` with footprint ``kernel``, only where the kernel fits.

    ``padded`` (float32, shape ``(Z+2hz, Y+2hy, X+2hx)`` with ``h = kernel.shape // 2``) already
    holds the halo; the result has shape ``(Z, Y, X)``.
    """
    dz, dy, width_index, widths = kernel_runs(kernel)
    hz, hy, hx = (s // 2 for s in kernel.shape)
    padded = np.ascontiguousarray(padded, dtype=np.float32)
    out_shape = (padded.shape[0] - 2 * hz, padded.shape[1] - 2 * hy, padded.shape[2] - 2 * hx)
    if min(out_shape) < 1:
        raise ValueError(f"block {padded.shape} is smaller than the kernel {kernel.shape}")
    out = np.empty(out_shape, dtype=np.float32)
    return _ball_max_valid(padded, dz, dy, width_index, widths, hz, hy, hx, out)


def ball_max(data: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Whole-array ball maximum filter with mirrored edges (scipy ``mode='reflect'``)."""
    halo = [(s // 2, s // 2) for s in kernel.shape]
    return ball_max_valid(np.pad(np.asarray(data, np.float32), halo, mode="symmetric"), kernel)
