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
def _ball_max_valid(padded, dz, dy, width_index, widths, hz, hy, hx, out, ring):  # pragma: no cover
    zp_n = padded.shape[0]
    z_n, y_n, x_n = out.shape
    n_w = widths.size
    depth = 2 * hz + 1
    wmax = widths[n_w - 1]
    # `ring` (depth, n_w, tile_y + 2hy, tile_x): x-run maxima of the last `depth` padded planes of
    # one (y, x) tile, one per half-width; tiles keep it small enough to stay in cache
    tile_y = ring.shape[2] - 2 * hy
    tile_x = ring.shape[3]
    store = np.full(wmax + 1, -1, np.int64)  # ring slot of each stored half-width
    for wi in range(n_w):
        store[widths[wi]] = wi
    # every maximum is written into another buffer than the one it reads (never in place), and
    # rows are read through slices indexed from 0: both let LLVM vectorise the loops
    acc_a = np.empty(tile_x, padded.dtype)
    acc_b = np.empty(tile_x, padded.dtype)
    run_a = np.empty(tile_x, padded.dtype)  # run maxima of half-widths the kernel does not use
    run_b = np.empty(tile_x, padded.dtype)
    n_rows = dz.size
    for ty0 in range(0, y_n, tile_y):
        ty_n = min(tile_y, y_n - ty0)
        for tx0 in range(0, x_n, tile_x):
            tw = min(tile_x, x_n - tx0)
            for zp in range(zp_n):
                slot = zp % depth
                for y in range(ty_n + 2 * hy):
                    # the row's run maxima, widened by one voxel each side per half-width
                    row = padded[zp, ty0 + y, tx0 + hx - wmax : tx0 + hx + wmax + tw]
                    centre = row[wmax : wmax + tw]
                    prv = ring[slot, store[0], y] if store[0] >= 0 else run_a
                    for x in range(tw):
                        prv[x] = centre[x]
                    for w in range(1, wmax + 1):
                        nxt = ring[slot, store[w], y] if store[w] >= 0 else (run_b if w % 2 == 1 else run_a)
                        left = row[wmax - w : wmax - w + tw]
                        right = row[wmax + w : wmax + w + tw]
                        for x in range(tw):
                            a = left[x]
                            b = right[x]
                            c = a if a > b else b
                            r = prv[x]
                            nxt[x] = c if c > r else r
                        prv = nxt
                if zp < depth - 1:
                    continue
                z = zp - (depth - 1)
                for y in range(ty_n):
                    # the maximum over the kernel's rows, four rows per sweep; on ties the earlier
                    # row's value is kept, as a sweep per row would
                    cur, other = acc_a, acc_b
                    first = ring[(z + hz + dz[0]) % depth, width_index[0], y + hy + dy[0]]
                    for x in range(tw):
                        cur[x] = first[x]
                    r = 1
                    while r + 3 < n_rows:
                        s1 = ring[(z + hz + dz[r]) % depth, width_index[r], y + hy + dy[r]]
                        s2 = ring[(z + hz + dz[r + 1]) % depth, width_index[r + 1], y + hy + dy[r + 1]]
                        s3 = ring[(z + hz + dz[r + 2]) % depth, width_index[r + 2], y + hy + dy[r + 2]]
                        s4 = ring[(z + hz + dz[r + 3]) % depth, width_index[r + 3], y + hy + dy[r + 3]]
                        for x in range(tw):
                            a1 = s1[x]
                            a2 = s2[x]
                            a3 = s3[x]
                            a4 = s4[x]
                            c12 = a2 if a2 > a1 else a1
                            c34 = a4 if a4 > a3 else a3
                            c = c34 if c34 > c12 else c12
                            a = cur[x]
                            other[x] = c if c > a else a
                        cur, other = other, cur
                        r += 4
                    while r < n_rows:
                        s1 = ring[(z + hz + dz[r]) % depth, width_index[r], y + hy + dy[r]]
                        for x in range(tw):
                            a = cur[x]
                            b = s1[x]
                            other[x] = b if b > a else a
                        cur, other = other, cur
                        r += 1
                    o = out[z, ty0 + y, tx0 : tx0 + tw]
                    for x in range(tw):
                        o[x] = cur[x]
    return out


TILE_Y, TILE_X = 16, 512  # output rows and columns per tile: the ring of a ball of radius 4 is about 2 MB


def ring_shape(padded_shape, kernel: np.ndarray) -> tuple[int, int, int, int]:
    """Shape of the scratch buffer :func:`ball_max_valid` keeps its run maxima in."""
    _, _, _, widths = kernel_runs(kernel)
    hy, hx = kernel.shape[1] // 2, kernel.shape[2] // 2
    rows, columns = padded_shape[1] - 2 * hy, padded_shape[2] - 2 * hx
    return (kernel.shape[0], widths.size, min(TILE_Y, rows) + 2 * hy, min(TILE_X, columns))


def ball_max_valid(padded: np.ndarray, kernel: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Maximum filter of ``padded`` with footprint ``kernel``, only where the kernel fits.

    ``padded`` (float32, shape ``(Z+2hz, Y+2hy, X+2hx)`` with ``h = kernel.shape // 2``) already
    holds the halo; the result has shape ``(Z, Y, X)`` (written into ``out`` when given).
    ``scratch``, a float32 array of :func:`ring_shape`, saves allocating the run-maxima buffer.
    """
    dz, dy, width_index, widths = kernel_runs(kernel)
    hz, hy, hx = (s // 2 for s in kernel.shape)
    padded = np.ascontiguousarray(padded, dtype=np.float32)
    out_shape = (padded.shape[0] - 2 * hz, padded.shape[1] - 2 * hy, padded.shape[2] - 2 * hx)
    if min(out_shape) < 1:
        raise ValueError(f"block {padded.shape} is smaller than the kernel {kernel.shape}")
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)
    elif out.shape != out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {out_shape}")
    ring = ring_shape(padded.shape, kernel)
    if scratch is None:
        scratch = np.empty(ring, dtype=np.float32)
    elif scratch.shape != ring or scratch.dtype != np.float32:
        raise ValueError(f"scratch must be a float32 array of shape {ring}")
    return _ball_max_valid(padded, dz, dy, width_index, widths, hz, hy, hx, out, scratch)


def ball_max(data: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Whole-array ball maximum filter with mirrored edges (scipy ``mode='reflect'``)."""
    halo = [(s // 2, s // 2) for s in kernel.shape]
    return ball_max_valid(np.pad(np.asarray(data, np.float32), halo, mode="symmetric"), kernel)
