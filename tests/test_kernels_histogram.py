"""kernels/histogram.py: counts against numpy's histogram, confidence lookups, counts inside the ellipsoid."""

import numpy as np

from occupy_dask.kernels.histogram import (
    confidence_lookup,
    confidence_lookup_reference,
    histogram_counts,
    histogram_edges,
)

RNG = np.random.default_rng(7)


def test_histogram_counts_add_up_to_numpy_histogram():
    data = RNG.normal(size=(30, 40, 50)).astype(np.float32)
    lo, hi = data.min(), data.max()
    edges = histogram_edges(lo, hi)
    # float32 edges of a double-precision linspace (numpy 1.x's float32 histogram edges)
    assert edges.dtype == np.float32 and edges[0] == lo and edges[-1] == hi
    assert np.array_equal(edges, np.linspace(float(lo), float(hi), 1001).astype(np.float32))
    counts = sum(histogram_counts(data[i : i + 7], lo, hi) for i in range(0, 30, 7))
    expected, _ = np.histogram(data, bins=edges)
    assert np.array_equal(counts, expected)


def test_confidence_lookups():
    data = RNG.normal(size=(10, 11, 12)).astype(np.float32)
    edges = histogram_edges(data.min(), data.max())
    table = np.linspace(-0.2, 1.3, 1000)
    got = confidence_lookup(data, table, edges)
    idx = np.clip(np.searchsorted(edges, data, side="right") - 1, 0, 999)  # the bin by its edges, last bin closed
    assert np.array_equal(got, np.clip(table[idx], 0, 1).astype(np.float32))
    ref = confidence_lookup_reference(data, table, data.min(), data.max())
    u = data / (data.max() - data.min())
    u -= u.min()
    idx = (u * 1000 - 1).astype(int)
    assert np.array_equal(ref, np.clip(table[idx], 0, 1).astype(np.float32))
    # the minimum voxel wraps to the last bin, as in the reference
    assert ref.ravel()[np.argmin(data)] == np.float32(np.clip(table[-1], 0, 1))


def test_counts_inside_the_ellipsoid_equal_counts_of_the_inside_voxels():
    from occupy_dask.kernels.histogram import histogram_counts_inside
    from occupy_dask.kernels.local import ellipsoid_terms, inscribed_ellipsoid

    shape, start, stop = (30, 32, 34), (5, 0, 7), (25, 20, 30)
    block = RNG.normal(size=tuple(b - a for a, b in zip(start, stop))).astype(np.float32)
    inside = inscribed_ellipsoid(shape, start, stop)
    lp_range, region_range = (float(block.min()), float(block.max())), (float(block[inside].min()), float(block[inside].max()) - 0.5)
    counts, region_counts = histogram_counts_inside(block, ellipsoid_terms(shape, start, stop), lp_range, region_range)
    assert np.array_equal(counts, histogram_counts(block, *lp_range))
    assert np.array_equal(region_counts, histogram_counts(block[inside], *region_range))  # values above the range are left out
    degenerate = histogram_counts_inside(block, ellipsoid_terms(shape, start, stop), lp_range, (0.0, 0.0))  # an empty range: the numpy path
    assert np.array_equal(degenerate[1], histogram_counts(block[inside], 0.0, 0.0))


def _hard_values(edges: np.ndarray) -> np.ndarray:
    """Every edge, the floats either side of it, values beyond the range, NaN and infinities."""
    near = np.concatenate([edges, np.nextafter(edges, np.float32(-np.inf)), np.nextafter(edges, np.float32(np.inf))])
    extra = np.array([np.nan, np.inf, -np.inf, edges[0] - 1, edges[-1] + 1, 3e38, -3e38], np.float32)
    return np.concatenate([near, extra]).astype(np.float32)


def test_bins_of_values_on_and_beside_every_edge_and_of_non_finite_ones():
    """The spacing only guesses a bin; the walk along the edges decides it, for every value:
    the last bin whose lower edge is at most the value (the last bin closed), values outside
    the range uncounted, and looked up in the first or last bin (NaN in the first)."""
    for lo, hi in ((-1.3, 2.7), (1.0, float(np.nextafter(np.float32(1.0), np.float32(2.0)) * 1.0000005)), (0.0, 1e-30)):
        edges = histogram_edges(lo, hi)
        values = RNG.permutation(_hard_values(edges)).reshape(1, 1, -1)
        table = RNG.uniform(-0.5, 1.5, 1000).astype(np.float32)
        expected_bin = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, 999)
        expected_bin[np.isnan(values)] = 0
        assert np.array_equal(confidence_lookup(values, table, edges), np.clip(table[expected_bin], 0, 1).astype(np.float32)), (lo, hi)
        counted = (values >= edges[0]) & (values <= edges[-1])
        assert np.array_equal(histogram_counts(values, lo, hi), np.bincount(expected_bin[counted], minlength=1000)), (lo, hi)
        assert histogram_counts(values, lo, hi).sum() == np.count_nonzero(counted)


def test_lookup_and_counts_by_buckets_equal_the_walk_for_every_float_across_edges():
    """The lookup and the counts take a value's bin from its bucket's when no edge lies in the
    bucket, and walk the edges otherwise: the 1200 consecutive floats about every edge (its
    bucket and the buckets beside it), ranges down to a span whose bucket scale overflows and up
    to one whose scale rounds to 0, and a table holding NaN give the bin of the value by its
    edges; values outside the range are not counted."""
    from occupy_dask.kernels.histogram import histogram_counts_inside
    from occupy_dask.kernels.local import ellipsoid_terms, inscribed_ellipsoid

    for lo, hi in ((-0.20582664, 0.08362165), (-1.3, 2.7), (1000.0, 1000.5), (0.0, 1e-36), (-3e-41, 0.0), (-3e38, 3e38)):
        edges = histogram_edges(lo, hi)
        table = RNG.uniform(-0.5, 1.5, 1000).astype(np.float32)
        table[[3, 500]] = np.nan
        near = edges.view(np.int32)[:, None] + np.arange(-600, 600, dtype=np.int32)  # the floats about each edge: its bucket and the next ones
        sweep = np.unique(near.view(np.float32))
        values = np.concatenate([sweep[np.isfinite(sweep)], _hard_values(edges)]).reshape(1, 1, -1)
        expected_bin = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, 999)
        expected_bin[np.isnan(values)] = 0
        got = confidence_lookup(values, table, edges)
        expected = np.clip(table[expected_bin], 0, 1).astype(np.float32)
        assert np.array_equal(got, expected, equal_nan=True), (lo, hi)
        counted = (values >= edges[0]) & (values <= edges[-1])
        expected_counts = np.bincount(expected_bin[counted], minlength=1000)
        assert np.array_equal(histogram_counts(values, lo, hi), expected_counts), (lo, hi)
        # in one sweep with a second range over the voxels inside the ellipsoid of a block
        block = np.resize(RNG.permutation(values.ravel()), (6, 40, 50))
        shape, start = (10, 40, 60), (2, 0, 5)
        stop = tuple(a + n for a, n in zip(start, block.shape))
        inside = inscribed_ellipsoid(shape, start, stop)
        other = (-0.5, 1e-3)
        counts, region_counts = histogram_counts_inside(block, ellipsoid_terms(shape, start, stop), (lo, hi), other)
        assert np.array_equal(counts, histogram_counts(block, lo, hi)), (lo, hi)
        region_edges, voxels = histogram_edges(*other), block[inside]
        voxels = voxels[(voxels >= region_edges[0]) & (voxels <= region_edges[-1])]
        region_bins = np.clip(np.searchsorted(region_edges, voxels, side="right") - 1, 0, 999)
        assert np.array_equal(region_counts, np.bincount(region_bins, minlength=1000)), (lo, hi)


def test_the_bucket_table_is_made_once_for_the_blocks_of_a_lookup():
    """Every block of a run looks up with the same edges and table: the table of buckets is made
    for the first and reused (making it costs as much as the lookup of a 32^3 block)."""
    from occupy_dask.kernels.histogram import _buckets_of

    data = RNG.normal(size=(4, 32, 32, 32)).astype(np.float32)
    edges = histogram_edges(data.min(), data.max())
    table = RNG.uniform(0, 1, 1000).astype(np.float32)
    _buckets_of.cache_clear()
    blocks = [confidence_lookup(block, table, edges) for block in data]
    assert _buckets_of.cache_info().misses == 1 and _buckets_of.cache_info().hits == 3
    assert np.array_equal(np.stack(blocks), confidence_lookup(data, table, edges))
    confidence_lookup(data[0], table[::-1].copy(), edges)  # another table: another bucket table
    assert _buckets_of.cache_info().misses == 2


def test_the_lookup_sums_its_results_as_moments_does():
    """``moments=``: the confidences' sum, sum of squares, min and max from the lookup's own loop,
    the bits of kernels.local.moments over the results in voxel order (NaN voxels, a table holding
    NaN, a strided block, an empty range's constant)."""
    from occupy_dask.kernels.local import moments

    values = RNG.normal(size=(5, 12, 40)).astype(np.float32)
    values[1, 2, 3], values[4, 0, 0] = np.nan, np.inf
    edges = histogram_edges(-1.0, 1.5)
    table = RNG.uniform(-0.2, 1.2, 1000).astype(np.float32)
    with_nan = table.copy()
    with_nan[[10, 600]] = np.nan
    padded = np.pad(values, 2)
    cases = [(values, edges, table), (padded[2:-2, 2:-2, 2:-2], edges, table), (values, edges, with_nan), (values, histogram_edges(0.5, 0.5), table)]
    for block, bin_edges, confidences in cases:
        sums = np.full(4, 7.0)  # overwritten, not added to
        got = confidence_lookup(block, confidences, bin_edges, moments=sums)
        assert np.array_equal(got, confidence_lookup(block, confidences, bin_edges), equal_nan=True)
        assert sums.tobytes() == np.array(moments(got.ravel())).tobytes()
        assert np.isnan(sums[0]) == (confidences is with_nan)
