"""Histogram counts and bin lookups on blocks (docs/method.md sections 6 and 7).

The 1000 equal bins over ``[lo, hi]`` have float32 edges computed in double precision and
rounded once (the way numpy 1.x builds the edges of a float32 histogram; numpy 2 accumulates
them in float32, which moves some edges by an ulp). A voxel's bin is decided by comparing it
with those edges, so per-block counts over a common range add up to the exact whole-array
histogram whatever the chunking. The confidence lookup reads the bin of most voxels from a
table of equal buckets (those holding no edge) and compares only the others with the edges:
the same bin (see :func:`_bucket_table`), for about two thirds of the cost.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .local import ellipsoid_mask, inside_ellipsoid

N_BINS = 1000


def histogram_edges(lo: float, hi: float, n_bins: int = N_BINS) -> np.ndarray:
    """``n_bins + 1`` float32 edges of equal bins over ``[lo, hi]``."""
    return np.linspace(float(np.float32(lo)), float(np.float32(hi)), n_bins + 1).astype(np.float32)


@numba.njit(cache=True, nogil=True, inline="always")
def _guess(v, first, scale, last):  # pragma: no cover
    """A float32 value's bin guessed from the equal spacing, in ``[0, last]`` (NaN: 0); no
    branch, so a sweep of guesses vectorises."""
    g = (v - first) * scale
    g = g if g > 0 else np.float32(0.0)
    g = g if g < last else last
    return np.int32(g)


@numba.njit(cache=True, nogil=True, inline="always")
def _settle(v, i, edges):  # pragma: no cover
    """The bin of ``v`` walked from guess ``i``: the last bin whose lower edge is at most ``v``
    (the first bin below the edges, the last above them; NaN stays at its guess). From any
    guess the walk ends in the same bin, so the guess only sets how far it walks."""
    n = edges.size - 1
    while i > 0 and v < edges[i]:
        i -= 1
    while i < n - 1 and v >= edges[i + 1]:
        i += 1
    return i


@numba.njit(cache=True, nogil=True, inline="always")
def _guesses(row, edges, scale, out):  # pragma: no cover
    """:func:`_guess` of every value of a row, into ``out``."""
    first, last = edges[0], np.float32(edges.size - 2)
    for k in range(row.size):
        out[k] = _guess(row[k], first, scale, last)


@numba.njit(cache=True, nogil=True, inline="always")
def _unit(f):  # pragma: no cover
    """A confidence clamped to [0, 1] (NaN stays NaN)."""
    return 0.0 if f < 0.0 else (1.0 if f > 1.0 else f)


COUNT_PIECE = 4096  # values whose bins are guessed in one (vectorised) sweep before they are counted


@numba.njit(cache=True, nogil=True)
def _count(values, edges, counts):  # pragma: no cover
    # even and odd values count into two histograms: neighbours, often in one bin, then do not
    # wait for each other's increment
    scale = np.float32(edges.size - 1) / (edges[-1] - edges[0])
    lo, hi = edges[0], edges[-1]
    odd = np.zeros(counts.size, np.int64)
    guesses = np.empty(COUNT_PIECE, np.int32)
    for start in range(0, values.size, COUNT_PIECE):
        piece = values[start : start + COUNT_PIECE]
        _guesses(piece, edges, scale, guesses)
        for i in range(piece.size):
            v = piece[i]
            if v >= lo and v <= hi:
                b = _settle(v, guesses[i], edges)
                if i & 1:
                    odd[b] += 1
                else:
                    counts[b] += 1
    counts += odd
    return counts


LOOKUP_BUCKETS = 1 << 16  # buckets of the confidence lookup's table: 256 KB, 65 per bin of 1000


@numba.njit(cache=True, nogil=True)
def _bucket_table(edges, table, n_buckets):  # pragma: no cover
    """The confidence of every bucket of ``n_buckets`` equal buckets over the edges' range, as
    :func:`_guess` places a value in them, or NaN for a bucket that holds an edge; and the
    buckets' scale.

    The bucket of a value never decreases with it (a subtraction, a multiplication by a positive
    scale, a clamp and a truncation, each rounded to nearest). So for a value ``v`` in bucket
    ``q`` and any edge ``e`` whose bucket is not ``q``: ``e <= v`` exactly when the edge's bucket
    is below ``q`` (``e <= v`` puts it at or below ``q``; ``e > v`` at or above). Where no edge
    lies in the bucket, every value in it has the same bin, the last whose lower edge is at most
    the value: the edges in lower buckets, less one (clamped to the bins); :func:`_settle` gives
    the same. Only the values in a bucket with an edge are walked."""
    scale = np.float32(n_buckets) / (edges[-1] - edges[0])
    first, last = edges[0], np.float32(n_buckets - 1)
    n_bins = edges.size - 1
    edge_buckets = np.empty(edges.size, np.int32)  # sorted edges, so their buckets never decrease
    for k in range(edges.size):
        edge_buckets[k] = _guess(edges[k], first, scale, last)
    out = np.empty(n_buckets, np.float32)
    below = 0  # edges in buckets below q
    for q in range(n_buckets):
        while below < edges.size and edge_buckets[below] < q:
            below += 1
        if below < edges.size and edge_buckets[below] == q:
            out[q] = np.nan
            continue
        b = below - 1
        out[q] = _unit(table[0 if b < 0 else (n_bins - 1 if b > n_bins - 1 else b)])
    return out, scale


@functools.lru_cache(maxsize=8)
def _buckets_of(edges: bytes, table: bytes) -> tuple[np.ndarray, np.float32]:
    """:func:`_bucket_table` of float32 ``edges`` and ``table`` (as bytes), made once per run's
    lookup rather than once per block: 0.2 ms, as much as the lookup of a 32^3 block."""
    buckets, scale = _bucket_table(np.frombuffer(edges, np.float32).copy(), np.frombuffer(table, np.float32).copy(), LOOKUP_BUCKETS)
    return buckets, np.float32(scale)


@numba.njit(cache=True, nogil=True)
def _lookup(values, edges, table, buckets, scale, out):  # pragma: no cover
    # per row: every value's bucket (vectorised), its bucket's confidence, then the walk for the
    # values whose bucket holds an edge (NaN; a NaN of the table is walked to the same NaN)
    first, last = edges[0], np.float32(buckets.size - 1)
    bin_scale, bin_last = np.float32(edges.size - 1) / (edges[-1] - edges[0]), np.float32(edges.size - 2)
    nz, ny, nx = values.shape
    index = np.empty(nx, np.int32)
    for z in range(nz):
        for y in range(ny):
            row, dst = values[z, y], out[z, y]
            for x in range(nx):
                index[x] = _guess(row[x], first, scale, last)
            for x in range(nx):
                dst[x] = buckets[index[x]]
            for x in range(nx):
                if dst[x] != dst[x]:
                    v = row[x]
                    dst[x] = _unit(table[_settle(v, _guess(v, first, bin_scale, bin_last), edges)])
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")  # no zero-divisor check per voxel: span > 0
def _lookup_reference(values, lo_over_span, span, table, out):  # pragma: no cover
    n = np.float32(table.size)
    one = np.float32(1.0)
    nz, ny, nx = values.shape
    for z in range(nz):
        for y in range(ny):
            row, dst = values[z, y], out[z, y]
            for x in range(nx):
                u = row[x] / span - lo_over_span
                i = int(u * n - one)  # truncates toward zero; -1 (the minimum voxel) wraps to the last bin
                dst[x] = _unit(table[i])
    return out


def _as_block(values: np.ndarray) -> np.ndarray:
    """float32 values as a 3D array for the lookups: a 3D block as it is (a view into a padded
    block too, not copied), anything else flattened."""
    values = np.asarray(values, dtype=np.float32)
    return values if values.ndim == 3 else np.ascontiguousarray(values).reshape(1, 1, -1)


def histogram_counts(values: np.ndarray, lo: float, hi: float, n_bins: int = N_BINS) -> np.ndarray:
    """Counts (int64) of float32 ``values`` in the bins of :func:`histogram_edges`; values outside
    ``[lo, hi]`` are not counted."""
    values = np.ascontiguousarray(values, dtype=np.float32).ravel()
    edges = histogram_edges(lo, hi, n_bins)
    if edges[-1] <= edges[0]:
        return np.bincount(np.zeros(np.count_nonzero(values == edges[0]), np.intp), minlength=n_bins).astype(np.int64)
    return _count(values, edges, np.zeros(n_bins, np.int64))


def density_from_counts(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Probability density exactly as ``np.histogram(..., density=True)`` computes it."""
    db = np.array(np.diff(edges), float)
    return counts / db / counts.sum()


def confidence_lookup(lp: np.ndarray, table: np.ndarray, edges: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Confidence per voxel: the content fraction of the voxel's histogram bin, in [0, 1]
    (float32, into ``out`` when given). A 3D ``lp`` may be a strided view (the core of a padded
    block): it is read where it is."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    if out is None:
        out = np.empty(np.shape(lp), dtype=np.float32)
    elif not (out.flags.c_contiguous and out.dtype == np.float32 and out.shape == np.shape(lp)):
        raise ValueError("out must be a C-contiguous float32 array shaped like the block")
    if edges[-1] <= edges[0]:
        out[...] = np.clip(table[0], 0.0, 1.0)
        return out
    block, edges = _as_block(lp), np.ascontiguousarray(edges, dtype=np.float32)
    buckets, scale = _buckets_of(edges.tobytes(), table.tobytes())
    _lookup(block, edges, table, buckets, scale, out.reshape(block.shape))
    return out


def confidence_lookup_reference(lp: np.ndarray, table: np.ndarray, lp_min: float, lp_max: float, out: np.ndarray | None = None) -> np.ndarray:
    """The reference's lookup (docs/method.md 11): ``int(u*1000 - 1)`` of the range-scaled map,
    where -1 (the minimum voxel) wraps to the last bin."""
    span = np.float32(lp_max) - np.float32(lp_min)
    if out is None:
        out = np.empty(np.shape(lp), dtype=np.float32)
    elif not (out.flags.c_contiguous and out.dtype == np.float32 and out.shape == np.shape(lp)):
        raise ValueError("out must be a C-contiguous float32 array shaped like the block")
    table = np.ascontiguousarray(table, dtype=np.float32)
    block = _as_block(lp)
    _lookup_reference(block, np.float32(lp_min) / span, span, table, out.reshape(block.shape))
    return out


@numba.njit(cache=True, nogil=True)
def _count_with_region(lp, tz, ty, tx, edges, region_edges, counts, region_counts):  # pragma: no cover
    scale = np.float32(edges.size - 1) / (edges[-1] - edges[0])
    region_scale = np.float32(region_edges.size - 1) / (region_edges[-1] - region_edges[0])
    lo, hi = edges[0], edges[-1]
    region_lo, region_hi = region_edges[0], region_edges[-1]
    nz, ny, nx = lp.shape
    guesses = np.empty(nx, np.int32)
    region_guesses = np.empty(nx, np.int32)
    for z in range(nz):
        for y in range(ny):
            row = lp[z, y]
            zy = tz[z] + ty[y]
            _guesses(row, edges, scale, guesses)
            _guesses(row, region_edges, region_scale, region_guesses)
            for x in range(nx):
                v = row[x]
                if v >= lo and v <= hi:
                    counts[_settle(v, guesses[x], edges)] += 1
                if inside_ellipsoid(zy, tx[x]) and v >= region_lo and v <= region_hi:
                    region_counts[_settle(v, region_guesses[x], region_edges)] += 1


def histogram_counts_inside(lp: np.ndarray, axis_terms, lp_range, region_range, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """In one sweep: counts of the whole block over ``lp_range`` and of its voxels inside the
    inscribed ellipsoid over ``region_range`` (``axis_terms`` as :func:`ellipsoid_terms`); the
    same numbers as :func:`histogram_counts` on the block and on its inside voxels."""
    edges, region_edges = histogram_edges(*lp_range, n_bins), histogram_edges(*region_range, n_bins)
    if edges[-1] <= edges[0] or region_edges[-1] <= region_edges[0]:
        return histogram_counts(lp, *lp_range, n_bins), histogram_counts(lp[ellipsoid_mask(axis_terms)], *region_range, n_bins)
    counts, region_counts = np.zeros(n_bins, np.int64), np.zeros(n_bins, np.int64)
    _count_with_region(np.asarray(lp, dtype=np.float32), *axis_terms, edges, region_edges, counts, region_counts)
    return counts, region_counts
