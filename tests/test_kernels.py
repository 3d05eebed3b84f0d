import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from occupy_dask.kernels.ballmax import ball_max, ball_max_valid
from occupy_dask.kernels.fourier import exact_lowpass_mask, reference_lowpass_mask
from occupy_dask.kernels.histogram import (
    confidence_lookup,
    confidence_lookup_reference,
    histogram_counts,
    histogram_edges,
)
from occupy_dask.kernels.local import inscribed_ellipsoid, local_scale
from occupy_dask.kernels.tiles import tile_layout, tile_quantiles
from occupy_dask.settings import ball_kernel

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("size, radius", [(3, 1.0), (3, 1.5), (5, 2.2), (7, 3.64), (9, 4.5), (9, 10.0), (15, 7.2)])
def test_ball_max_equals_scipy_reflect(size, radius):
    data = RNG.normal(size=(23, 31, 29)).astype(np.float32)
    kernel = ball_kernel((size,) * 3, (radius,) * 3)
    expected = ndimage.maximum_filter(data, footprint=kernel, mode="reflect")
    assert np.array_equal(ball_max(data, kernel), expected)


def test_ball_max_with_ellipsoid_kernel():
    data = RNG.normal(size=(20, 26, 33)).astype(np.float32)
    kernel = ball_kernel((7, 5, 5), (3.8, 2.4, 2.2))
    expected = ndimage.maximum_filter(data, footprint=kernel, mode="reflect")
    assert np.array_equal(ball_max(data, kernel), expected)


@settings(max_examples=25, deadline=None)
@given(size=st.sampled_from([3, 5, 7, 9, 11, 13, 15]), radius=st.floats(0.5, 9.0), seed=st.integers(0, 2**16))
def test_ball_max_property_random_radius(size, radius, seed):
    data = np.random.default_rng(seed).normal(size=(18, 17, 19)).astype(np.float32)
    kernel = ball_kernel((size,) * 3, (radius,) * 3)
    expected = ndimage.maximum_filter(data, footprint=kernel, mode="reflect")
    assert np.array_equal(ball_max(data, kernel), expected)


def test_ball_max_valid_on_an_interior_block():
    data = RNG.normal(size=(40, 40, 40)).astype(np.float32)
    kernel = ball_kernel((7,) * 3, (3.3,) * 3)
    full = ndimage.maximum_filter(data, footprint=kernel, mode="reflect")
    assert np.array_equal(ball_max_valid(data[7:30, 5:33, 10:27], kernel), full[10:27, 8:30, 13:24])


def _brute_tiles(shape, t):
    keep = []
    axes = [np.arange(n // t) * t + (n - (n // t) * t) // 2 for n in shape]
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                c = np.array([z, y, x]) + t / 2
                if sum(((c[d] - shape[d] / 2) / (shape[d] / 2)) ** 2 for d in range(3)) <= 1:
                    keep.append((z, y, x))
    return np.array(keep)


def test_default_tile_layout_matches_brute_force():
    for shape, t in [((96, 96, 96), 12), ((25, 43, 73), 5), ((65, 64, 63), 12)]:
        origins, _ = tile_layout(shape, t, None)
        assert np.array_equal(origins, _brute_tiles(shape, t))


def test_reference_tile_grid():
    origins, index = tile_layout((96, 96, 96), 4, 20)
    # step 4, edge 8; kept when the grid distance from 10 is below 9
    assert np.array_equal(origins, 8 + 4 * index)
    assert np.all(np.sqrt(((index - 10.0) ** 2).sum(axis=1)) < 9)
    assert len(origins) == int((np.sqrt(((np.indices((20,) * 3).reshape(3, -1).T - 10.0) ** 2).sum(1)) < 9).sum())
    origins, index = tile_layout((64, 64, 64), 12, 20)  # overlapping tiles: step 2, edge 7
    assert np.array_equal(origins, 7 + 2 * index)


def test_tile_quantiles_against_sort():
    data = RNG.normal(size=(30, 30, 30)).astype(np.float32)
    origins = np.array([[0, 0, 0], [5, 7, 9], [18, 18, 18]])
    got = tile_quantiles(data, (0, 0, 0), origins, 12, 0.9807)
    for value, (z, y, x) in zip(got, origins):
        tile = np.sort(data[z : z + 12, y : y + 12, x : x + 12].ravel())
        assert value == tile[int(np.floor(0.9807 * 1728))]


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


def test_lowpass_masks():
    shape, vs, lp = (16, 18, 20), (1.0, 1.2, 0.9), 4.0
    mask = exact_lowpass_mask(shape, vs, lp, (slice(None),) * 3)
    kz, ky, kx = np.meshgrid(np.fft.fftfreq(16, 1.0), np.fft.fftfreq(18, 1.2), np.fft.rfftfreq(20, 0.9), indexing="ij")
    assert np.array_equal(mask, np.sqrt(kz**2 + ky**2 + kx**2) <= 1 / lp)
    part = exact_lowpass_mask(shape, vs, lp, (slice(3, 9), slice(None), slice(2, 7)))
    assert np.array_equal(part, mask[3:9, :, 2:7])
    ref = reference_lowpass_mask((32,) * 3, 1.0, 8.0, (slice(None),) * 3)  # ks = 4
    k = np.round(np.fft.fftfreq(32) * 32)
    assert ref[0, 0, 0] and ref[int(np.flatnonzero(k == -4)[0]), 0, 0] and not ref[4, 0, 0]
    assert not ref[0, 0, 6]


def test_scale_and_ellipsoid():
    assert np.array_equal(local_scale(np.array([-1.0, 0.5, 2.0, 4.0], np.float32), 2.0), [0.0, 0.25, 1.0, 1.0])
    full = inscribed_ellipsoid((10, 12, 14), (0, 0, 0), (10, 12, 14))
    assert np.array_equal(inscribed_ellipsoid((10, 12, 14), (2, 3, 4), (7, 9, 11)), full[2:7, 3:9, 4:11])
    assert full[5, 6, 7] and not full[0, 0, 0]


def test_monotone_walk_and_hedge():
    from occupy_dask.solvent import hedged, monotone_from_top

    raw = np.array([0.3, -0.2, 0.5, 0.4, 0.8, 0.9, 1.0])
    walked = monotone_from_top(raw)
    # walking down: never above the bin above, and each step at least the previous one
    # (0.9, 0.8 step 0.1; 0.4 step 0.4; then 0.0 by the step); the first non-positive raw bin
    # stops the walk: it keeps its raw value and everything below it is 0
    assert np.allclose(walked, [0.0, -0.2, 0.0, 0.4, 0.8, 0.9, 1.0])
    # default: hedging never raises confidence; the reference squares the negative bin
    assert np.all(hedged(walked, 2.0) <= np.clip(walked, 0, 1))
    assert hedged(walked, 2.0)[1] == 0.0
    assert hedged(walked, 2.0, reference=True)[1] == pytest.approx(0.04)
    assert hedged(walked, 2.5, reference=True)[1] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_largest_tile_quantile_is_the_argmax_of_all_quantiles(seed):
    from occupy_dask.kernels.tiles import largest_tile_quantile, quantile_index, tile_quantiles

    rng = np.random.default_rng(seed)
    t = int(rng.integers(2, 13))
    n = t + 12
    block = rng.normal(size=(n, n, n)).astype(np.float32)
    if seed % 2:
        block = np.round(block * 3).astype(np.float32)  # many tied quantiles: the first tile must win
    origins = rng.integers(0, n - t + 1, size=(60, 3))
    tau = float(rng.choice([0.5, 0.9, 0.9647, 0.999]))
    every = tile_quantiles(block, (0, 0, 0), origins, t, tau)
    k = quantile_index(tau, t**3)
    assert np.array_equal(every, [np.partition(block[z : z + t, y : y + t, x : x + t].ravel(), k)[k] for z, y, x in origins])
    assert largest_tile_quantile(block, (0, 0, 0), origins, t, tau) == (int(np.argmax(every)), float(every.max()))
