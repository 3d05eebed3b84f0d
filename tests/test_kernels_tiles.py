"""kernels/tiles.py: tile layouts against brute force, tile quantiles against sorting."""

import numpy as np
import pytest

from occupy_dask.kernels.tiles import tile_layout, tile_quantiles

RNG = np.random.default_rng(7)


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
