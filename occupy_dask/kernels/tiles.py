"""Tile layout and tile quantiles for the full-scale reference (docs/method.md section 4)."""

from __future__ import annotations

import math

import numba
import numpy as np


def tile_origins_default(n: int, tile_size: int) -> np.ndarray:
    """Non-overlapping tiles of stride ``tile_size``, ``floor(n/T)`` of them, centred in ``n``."""
    count = n // tile_size
    first = (n - count * tile_size) // 2
    return first + tile_size * np.arange(count, dtype=np.int64)


def tile_origins_grid(n: int, tile_size: int, grid: int) -> np.ndarray:
    """The reference grid: ``grid`` tiles per axis spread evenly over ``n`` voxels."""
    step = tile_size + (n - grid * tile_size) // (grid - 1)
    edge = (n - ((grid - 1) * step + tile_size)) // 2
    return edge + step * np.arange(grid, dtype=np.int64)


def tile_layout(shape: tuple[int, int, int], tile_size: int, grid: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Origins and grid indices of the tiles that take part in the full-scale reference.

    Returns ``origins`` (n_tiles, 3) and ``indices`` (n_tiles, 3), both int64, in stored axis
    order. Default grid: tiles whose centre lies inside the ellipsoid inscribed in the box.
    Reference grid: tile (i, j, k) kept when its distance from ``G/2`` is below ``G/2 - 1``.
    """
    if grid is None:
        axes = [tile_origins_default(n, tile_size) for n in shape]
    else:
        axes = [tile_origins_grid(n, tile_size, grid) for n in shape]
    idx = np.stack(np.meshgrid(*[np.arange(a.size) for a in axes], indexing="ij"), -1).reshape(-1, 3)
    origins = np.stack([axes[d][idx[:, d]] for d in range(3)], axis=-1)
    if grid is None:
        centre = origins + tile_size / 2.0
        half = np.asarray(shape, dtype=np.float64) / 2.0
        keep = (((centre - half) / half) ** 2).sum(axis=1) <= 1.0
    else:
        keep = np.sqrt(((idx - grid / 2.0) ** 2).sum(axis=1)) < grid / 2.0 - 1.0
    return origins[keep], idx[keep]


def quantile_index(tau: float, n_values: int) -> int:
    """0-based index of the tau-quantile among ``n_values`` sorted values."""
    return min(int(math.floor(tau * n_values)), n_values - 1)


@numba.njit(cache=True, nogil=True)
def _select(values, k):  # pragma: no cover
    """The k-th smallest of ``values`` (reordered in place): quickselect, median-of-three pivot."""
    lo, hi = 0, values.size - 1
    while hi > lo:
        mid = (lo + hi) // 2
        if values[mid] < values[lo]:
            values[mid], values[lo] = values[lo], values[mid]
        if values[hi] < values[lo]:
            values[hi], values[lo] = values[lo], values[hi]
        if values[hi] < values[mid]:
            values[hi], values[mid] = values[mid], values[hi]
        pivot = values[mid]
        i, j = lo, hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while pivot < values[j]:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return values[k]
    return values[k]


@numba.njit(cache=True, nogil=True)
def _select_top(values, m, heap):  # pragma: no cover
    """The m-th largest of ``values`` (the (size - m)-th smallest): a min-heap of the m largest
    seen so far, which most values (those below its root) pass by with one comparison."""
    for i in range(m):  # heapify the first m values
        heap[i] = values[i]
    for start in range(m // 2 - 1, -1, -1):
        _sift_down(heap, start, m)
    for i in range(m, values.size):
        v = values[i]
        if v > heap[0]:
            heap[0] = v
            _sift_down(heap, 0, m)
    return heap[0]


@numba.njit(cache=True, nogil=True)
def _sift_down(heap, i, m):  # pragma: no cover
    while True:
        child = 2 * i + 1
        if child >= m:
            return
        if child + 1 < m and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] < heap[i]:
            heap[child], heap[i] = heap[i], heap[child]
            i = child
        else:
            return


TOP_SELECT_MAX = 256  # above this many values past the quantile, quickselect is faster than a heap


@numba.njit(cache=True, nogil=True)
def _gather(block, origin, t, values):  # pragma: no cover
    """The t^3 values of the tile at ``origin`` into ``values``."""
    n = 0
    for z in range(origin[0], origin[0] + t):
        for y in range(origin[1], origin[1] + t):
            row = block[z, y, origin[2] : origin[2] + t]
            for x in range(t):
                values[n + x] = row[x]
            n += t


@numba.njit(cache=True, nogil=True)
def _quantile(values, k, heap):  # pragma: no cover
    """The k-th smallest of ``values`` (NaN if any value is NaN); ``heap`` holds size - k values."""
    for v in values:
        if v != v:
            return v
    m = values.size - k
    return _select_top(values, m, heap) if m <= TOP_SELECT_MAX else _select(values, k)


@numba.njit(cache=True, nogil=True)
def _tile_quantiles(block, rel, t, k, out):  # pragma: no cover
    values = np.empty(t * t * t, dtype=block.dtype)
    m = values.size - k
    heap = np.empty(m, dtype=block.dtype)
    for i in range(rel.shape[0]):
        _gather(block, rel[i], t, values)
        out[i] = _quantile(values, k, heap)
    return out


def tile_quantiles(block: np.ndarray, block_origin: tuple[int, int, int], origins: np.ndarray, tile_size: int, tau: float) -> np.ndarray:
    """Tau-quantile of each tile (float32, one per row of ``origins``): the value at index
    :func:`quantile_index` of the tile's sorted values, found by selection.

    ``block`` holds the data from ``block_origin`` on and must contain every tile.
    """
    k = quantile_index(tau, tile_size**3)
    rel = np.ascontiguousarray(np.asarray(origins, dtype=np.int64) - np.asarray(block_origin, dtype=np.int64)).reshape(-1, 3)
    out = np.empty(len(rel), dtype=np.float32)
    if len(rel):
        _tile_quantiles(np.asarray(block, dtype=np.float32), rel, int(tile_size), int(k), out)
    return out


@numba.njit(cache=True, nogil=True)
def _largest_tile_quantile(block, rel, t, k):  # pragma: no cover
    values = np.empty(t * t * t, dtype=block.dtype)
    m = values.size - k
    heap = np.empty(m, dtype=block.dtype)
    best, best_i = -np.inf, -1
    for i in range(rel.shape[0]):
        _gather(block, rel[i], t, values)
        above = 0
        for v in values:
            above += v > best
        if above < m:  # its quantile (the m-th largest value) cannot exceed the best so far
            continue
        q = _quantile(values, k, heap)
        if q != q:
            return i, q  # NaN maps are refused after this pass
        if q > best:
            best, best_i = q, i
    return best_i, best


def largest_tile_quantile(block: np.ndarray, block_origin, origins: np.ndarray, tile_size: int, tau: float) -> tuple[int, float]:
    """``(row of origins, value)`` of the tile with the largest tau-quantile (the first such
    row on ties), as ``argmax`` of :func:`tile_quantiles`; tiles whose values cannot beat the
    best so far are passed over after one count."""
    k = quantile_index(tau, tile_size**3)
    rel = np.ascontiguousarray(np.asarray(origins, dtype=np.int64) - np.asarray(block_origin, dtype=np.int64)).reshape(-1, 3)
    if len(rel) == 0:
        return -1, -np.inf
    i, value = _largest_tile_quantile(np.asarray(block, dtype=np.float32), rel, int(tile_size), int(k))
    return int(i), float(value)


@numba.njit(cache=True, nogil=True)
def _tile_moments(block, rel, t, out):  # pragma: no cover
    for i in range(rel.shape[0]):
        z0, y0, x0 = rel[i, 0], rel[i, 1], rel[i, 2]
        total = 0.0
        squares = 0.0
        top = -np.inf
        along_x = 0.0  # a running total per axis: three short chains of additions instead of one long one
        along_y = 0.0
        along_z = 0.0
        for z in range(z0, z0 + t):
            for y in range(y0, y0 + t):
                previous = np.float64(block[z, y, x0])
                for x in range(x0, x0 + t):
                    v = np.float64(block[z, y, x])
                    total += v
                    squares += v * v
                    if v > top:
                        top = v
                    d = v - previous  # 0 at the row's first voxel
                    along_x += d * d
                    previous = v
                if y > y0:
                    for x in range(x0, x0 + t):
                        d = np.float64(block[z, y, x]) - np.float64(block[z, y - 1, x])
                        along_y += d * d
                if z > z0:
                    for x in range(x0, x0 + t):
                        d = np.float64(block[z, y, x]) - np.float64(block[z - 1, y, x])
                        along_z += d * d
        out[i, 0] = total
        out[i, 1] = squares
        out[i, 2] = along_x + along_y + along_z
        out[i, 3] = top
    return out


TILE_MOMENTS = ("sum", "sum of squares", "sum of squared steps", "max")


def tile_moments(block: np.ndarray, block_origin, origins: np.ndarray, tile_size: int) -> np.ndarray:
    """(n_tiles, 4) float64 per tile (TILE_MOMENTS): the sum and the sum of squares of its
    values, the sum of the squared differences between neighbours inside the tile along each
    axis (how rough the map is there), and its largest value; summed in C order (``block``
    holds the data from ``block_origin`` on and contains every tile)."""
    rel = np.ascontiguousarray(np.asarray(origins, dtype=np.int64) - np.asarray(block_origin, dtype=np.int64)).reshape(-1, 3)
    out = np.zeros((len(rel), len(TILE_MOMENTS)), dtype=np.float64)
    if len(rel):
        _tile_moments(np.asarray(block, dtype=np.float32), rel, int(tile_size), out)
    return out
