"""Histogram counts and bin lookups on blocks (docs/method.md sections 6 and 7).

The 1000 equal bins over ``[lo, hi]`` have float32 edges computed in double precision and
rounded once (the way numpy 1.x builds the edges of a float32 histogram; numpy 2 accumulates
them in float32, which moves some edges by an ulp). A voxel's bin is decided by comparing it
with those edges, so per-block counts over a common range add up to the exact whole-array
histogram whatever the chunking. The counts and the confidence lookup read the bin of most
voxels from a table of equal buckets (those holding no edge) and compare only the others with
the edges: the same bin (see :func:`_bucket_bins`), for two thirds to four fifths of the cost.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .local import add_moment, ellipsoid_mask, inside_ellipsoid
from .local import moments as _moments

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
def _unit(f):  # pragma: no cover
    """A confidence clamped to [0, 1] (NaN stays NaN)."""
    return 0.0 if f < 0.0 else (1.0 if f > 1.0 else f)


LOOKUP_BUCKETS = 1 << 16  # buckets of the confidence lookup's table: 256 KB, 65 per bin of 1000


@numba.njit(cache=True, nogil=True)
def _bucket_bins(edges, out):  # pragma: no cover
    """The bin of every bucket of ``out.size`` equal buckets over the edges' range, as
    :func:`_guess` places a value in them, or -1 for a bucket that holds an edge (into ``out``);
    returns the buckets' scale.

    The bucket of a value never decreases with it (a subtraction, a multiplication by a positive
    scale, a clamp and a truncation, each rounded to nearest). So for a value ``v`` in bucket
    ``q`` and any edge ``e`` whose bucket is not ``q``: ``e <= v`` exactly when the edge's bucket
    is below ``q`` (``e <= v`` puts it at or below ``q``; ``e > v`` at or above). Where no edge
    lies in the bucket, every value in it has the same bin, the last whose lower edge is at most
    the value: the edges in lower buckets, less one; :func:`_settle` gives the same. The first
    edge lies in bucket 0 and the last in the last bucket (its scaled offset rounds to within a
    few thousandths of the bucket count, and is clamped), so every value outside the edges'
    range, NaN and the infinities lie in a bucket with an edge: only the values in those buckets
    are compared with the edges. (A range so wide that its scale rounds to 0 puts every value in
    bucket 0; the bins of the buckets no value reaches are clamped to the histogram's.)"""
    n_buckets = out.size
    scale = np.float32(n_buckets) / (edges[-1] - edges[0])
    first, last = edges[0], np.float32(n_buckets - 1)
    edge_buckets = np.empty(edges.size, np.int32)  # sorted edges, so their buckets never decrease
    for k in range(edges.size):
        edge_buckets[k] = _guess(edges[k], first, scale, last)
    below = 0  # edges in buckets below q
    for q in range(n_buckets):
        while below < edges.size and edge_buckets[below] < q:
            below += 1
        out[q] = -1 if below < edges.size and edge_buckets[below] == q else min(max(below - 1, 0), edges.size - 2)
    return scale


@numba.njit(cache=True, nogil=True)
def _bucket_table(edges, table, n_buckets):  # pragma: no cover
    """The confidence of every bucket of ``n_buckets`` equal buckets (see :func:`_bucket_bins`),
    or NaN for a bucket that holds an edge; and the buckets' scale."""
    bins = np.empty(n_buckets, np.int32)
    scale = _bucket_bins(edges, bins)
    out = np.empty(n_buckets, np.float32)
    for q in range(n_buckets):
        out[q] = np.nan if bins[q] < 0 else _unit(table[bins[q]])
    return out, scale


@functools.lru_cache(maxsize=8)
def _bins_of(edges: bytes) -> tuple[np.ndarray, np.float32]:
    """:func:`_bucket_bins` of float32 ``edges`` (as bytes; int16 bins where they fit, a table
    of 128 KB), made once per run's histogram rather than once per block."""
    edges = np.frombuffer(edges, np.float32).copy()
    bins = np.empty(LOOKUP_BUCKETS, np.int16 if edges.size <= 1 << 15 else np.int32)
    return bins, np.float32(_bucket_bins(edges, bins))


@numba.njit(cache=True, nogil=True, inline="always")
def _bins(row, edges, buckets, scale, out):  # pragma: no cover
    """The bin of every value of a row from its bucket's (-1: walk the edges), into ``out``."""
    first, last = edges[0], np.float32(buckets.size - 1)
    for k in range(row.size):
        out[k] = buckets[np.uint32(_guess(row[k], first, scale, last))]  # unsigned: no check for a negative index


@numba.njit(cache=True, nogil=True, inline="always")
def _walk(v, edges):  # pragma: no cover
    """The bin of ``v`` by the edges, or -1 outside their range (NaN too)."""
    if not (v >= edges[0] and v <= edges[-1]):
        return -1
    return _settle(v, _guess(v, edges[0], np.float32(edges.size - 1) / (edges[-1] - edges[0]), np.float32(edges.size - 2)), edges)


@numba.njit(cache=True, nogil=True, inline="always")
def _count_one(v, bucket_bin, edges, counts):  # pragma: no cover
    """Count ``v`` in its bin: ``bucket_bin`` as :func:`_bins` found it (-1: walk the edges)."""
    b = np.int64(bucket_bin)
    if b < 0:
        b = _walk(v, edges)
    if b >= 0:
        counts[b] += 1


COUNT_PIECE = 4096  # values whose bins are read from the buckets in one (vectorised) sweep before they are counted


@numba.njit(cache=True, nogil=True)
def _count(values, edges, buckets, scale, counts):  # pragma: no cover
    # even and odd values count into two histograms: neighbours, often in one bin, then do not
    # wait for each other's increment
    odd = np.zeros(counts.size, np.int64)
    found = np.empty(COUNT_PIECE, buckets.dtype)
    for start in range(0, values.size, COUNT_PIECE):
        piece = values[start : start + COUNT_PIECE]
        _bins(piece, edges, buckets, scale, found)
        for i in range(piece.size):
            _count_one(piece[i], found[i], edges, odd if i & 1 else counts)
    counts += odd
    return counts


@functools.lru_cache(maxsize=8)
def _buckets_of(edges: bytes, table: bytes) -> tuple[np.ndarray, np.float32]:
    """:func:`_bucket_table` of float32 ``edges`` and ``table`` (as bytes), made once per run's
    lookup rather than once per block: 0.2 ms, as much as the lookup of a 32^3 block."""
    buckets, scale = _bucket_table(np.frombuffer(edges, np.float32).copy(), np.frombuffer(table, np.float32).copy(), LOOKUP_BUCKETS)
    return buckets, np.float32(scale)


@numba.njit(cache=True, nogil=True, inline="always")
def _lookup_rows(values, edges, table, buckets, scale, out, sums, with_moments):  # pragma: no cover
    # per row: every value's bucket (vectorised), its bucket's confidence, then the walk for the
    # values whose bucket holds an edge (NaN; a NaN of the table is walked to the same NaN).
    # With ``with_moments`` (a constant where the kernels below inline this) the results' moments
    # too, in voxel order as moments() adds them: the additions, each waiting for the one before,
    # overlap the lookups
    first, last = edges[0], np.float32(buckets.size - 1)
    bin_scale, bin_last = np.float32(edges.size - 1) / (edges[-1] - edges[0]), np.float32(edges.size - 2)
    nz, ny, nx = values.shape
    index = np.empty(nx, np.uint32)  # unsigned: no check for a negative index
    total, squares, lo, hi = sums[0], sums[1], sums[2], sums[3]
    for z in range(nz):
        for y in range(ny):
            row, dst = values[z, y], out[z, y]
            for x in range(nx):
                index[x] = np.uint32(_guess(row[x], first, scale, last))
            for x in range(nx):
                dst[x] = buckets[index[x]]
            for x in range(nx):
                if dst[x] != dst[x]:
                    v = row[x]
                    dst[x] = _unit(table[_settle(v, _guess(v, first, bin_scale, bin_last), edges)])
                if with_moments:
                    total, squares, lo, hi = add_moment(np.float64(dst[x]), total, squares, lo, hi)
    sums[0], sums[1], sums[2], sums[3] = total, squares, lo, hi


@numba.njit(cache=True, nogil=True)
def _lookup(values, edges, table, buckets, scale, out):  # pragma: no cover
    _lookup_rows(values, edges, table, buckets, scale, out, np.zeros(4), False)
    return out


@numba.njit(cache=True, nogil=True)
def _lookup_with_moments(values, edges, table, buckets, scale, out, sums):  # pragma: no cover
    _lookup_rows(values, edges, table, buckets, scale, out, sums, True)
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
    buckets, scale = _bins_of(edges.tobytes())
    return _count(values, edges, buckets, scale, np.zeros(n_bins, np.int64))


def density_from_counts(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Probability density exactly as ``np.histogram(..., density=True)`` computes it."""
    db = np.array(np.diff(edges), float)
    return counts / db / counts.sum()


def confidence_lookup(
    lp: np.ndarray, table: np.ndarray, edges: np.ndarray, out: np.ndarray | None = None, moments: np.ndarray | None = None
) -> np.ndarray:
    """Confidence per voxel: the content fraction of the voxel's histogram bin, in [0, 1]
    (float32, into ``out`` when given). A 3D ``lp`` may be a strided view (the core of a padded
    block): it is read where it is. ``moments``, a float64 array of 4, is set to the results'
    (sum, sum of squares, min, max) in voxel order, the numbers of
    :func:`~occupy_dask.kernels.local.moments`, from the same loop."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    if out is None:
        out = np.empty(np.shape(lp), dtype=np.float32)
    elif not (out.flags.c_contiguous and out.dtype == np.float32 and out.shape == np.shape(lp)):
        raise ValueError("out must be a C-contiguous float32 array shaped like the block")
    if edges[-1] <= edges[0]:
        out[...] = np.clip(table[0], 0.0, 1.0)
        if moments is not None:
            moments[:] = _moments(out.reshape(-1))
        return out
    block, edges = _as_block(lp), np.ascontiguousarray(edges, dtype=np.float32)
    buckets, scale = _buckets_of(edges.tobytes(), table.tobytes())
    if moments is None:
        _lookup(block, edges, table, buckets, scale, out.reshape(block.shape))
    else:
        moments[:] = (0.0, 0.0, np.inf, -np.inf)
        _lookup_with_moments(block, edges, table, buckets, scale, out.reshape(block.shape), moments)
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
def _count_with_region(lp, tz, ty, tx, edges, buckets, scale, region_edges, region_buckets, region_scale, counts, region_counts):  # pragma: no cover
    nz, ny, nx = lp.shape
    found = np.empty(nx, buckets.dtype)
    region_found = np.empty(nx, region_buckets.dtype)
    for z in range(nz):
        for y in range(ny):
            row = lp[z, y]
            zy = tz[z] + ty[y]
            _bins(row, edges, buckets, scale, found)
            _bins(row, region_edges, region_buckets, region_scale, region_found)
            for x in range(nx):
                _count_one(row[x], found[x], edges, counts)
                if inside_ellipsoid(zy, tx[x]):
                    _count_one(row[x], region_found[x], region_edges, region_counts)


def histogram_counts_inside(lp: np.ndarray, axis_terms, lp_range, region_range, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """In one sweep: counts of the whole block over ``lp_range`` and of its voxels inside the
    inscribed ellipsoid over ``region_range`` (``axis_terms`` as :func:`ellipsoid_terms`); the
    same numbers as :func:`histogram_counts` on the block and on its inside voxels."""
    tables = counting_tables(lp_range, region_range, n_bins)
    if tables is None:
        return histogram_counts(lp, *lp_range, n_bins), histogram_counts(lp[ellipsoid_mask(axis_terms)], *region_range, n_bins)
    counts, region_counts = np.zeros(n_bins, np.int64), np.zeros(n_bins, np.int64)
    _count_with_region(np.asarray(lp, dtype=np.float32), *axis_terms, *tables, counts, region_counts)
    return counts, region_counts


def counting_tables(lp_range, region_range, n_bins: int = N_BINS) -> tuple | None:
    """``(edges, buckets, scale)`` of the whole block's and of the region's histogram, as the
    counting kernels take them; None where a range is empty (edges all equal), which numpy counts."""
    edges, region_edges = histogram_edges(*lp_range, n_bins), histogram_edges(*region_range, n_bins)
    if edges[-1] <= edges[0] or region_edges[-1] <= region_edges[0]:
        return None
    return (edges, *_bins_of(edges.tobytes()), region_edges, *_bins_of(region_edges.tobytes()))
