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
    # two row buffers: writing each maximum into the other buffer (never in place) lets LLVM
    # vectorise the loops, which it does not do for a read-modify-write of a possibly aliased row
    acc_a = np.empty(tile_x, padded.dtype)
    acc_b = np.empty(tile_x, padded.dtype)
    for ty0 in range(0, y_n, tile_y):
        ty_n = min(tile_y, y_n - ty0)
        for tx0 in range(0, x_n, tile_x):
            tw = min(tile_x, x_n - tx0)
            for zp in range(zp_n):
                slot = zp % depth
                for y in range(ty_n + 2 * hy):
                    row = padded[zp, ty0 + y, tx0:]
                    run = np.empty(tw, padded.dtype)  # a fresh buffer: known not to alias `row`
                    for x in range(tw):
                        run[x] = row[x + hx]
                    if store[0] >= 0:
                        dst = ring[slot, store[0], y]
                        for x in range(tw):
                            dst[x] = run[x]
                    for w in range(1, wmax + 1):  # widen the run by one voxel each side
                        for x in range(tw):
                            a = row[x + hx - w]
                            b = row[x + hx + w]
                            c = a if a > b else b
                            run[x] = c if c > run[x] else run[x]
                        if store[w] >= 0:
                            dst = ring[slot, store[w], y]
                            for x in range(tw):
                                dst[x] = run[x]
                if zp < depth - 1:
                    continue
                z = zp - (depth - 1)
                for y in range(ty_n):
                    src = ring[(z + hz + dz[0]) % depth, width_index[0], y + hy + dy[0]]
                    for x in range(tw):
                        acc_a[x] = src[x]
                    for r in range(1, dz.size):
                        src = ring[(z + hz + dz[r]) % depth, width_index[r], y + hy + dy[r]]
                        if r % 2 == 1:
                            for x in range(tw):
                                a = acc_a[x]
                                b = src[x]
                                acc_b[x] = b if b > a else a
                        else:
                            for x in range(tw):
                                a = acc_b[x]
                                b = src[x]
                                acc_a[x] = b if b > a else a
                    last = acc_a if dz.size % 2 == 1 else acc_b
                    o = out[z, ty0 + y, tx0:]
                    for x in range(tw):
                        o[x] = last[x]
    return out


TILE_Y, TILE_X = 32, 256  # output rows and columns per tile: the ring of a ball of radius 4 is about 2 MB


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
