"""kernels/local.py: local scale, the inscribed ellipsoid, block moments."""

import numpy as np

from occupy_dask.kernels.local import inscribed_ellipsoid, local_scale


def test_scale_and_ellipsoid():
    assert np.array_equal(local_scale(np.array([-1.0, 0.5, 2.0, 4.0], np.float32), 2.0), [0.0, 0.25, 1.0, 1.0])
    full = inscribed_ellipsoid((10, 12, 14), (0, 0, 0), (10, 12, 14))
    assert np.array_equal(inscribed_ellipsoid((10, 12, 14), (2, 3, 4), (7, 9, 11)), full[2:7, 3:9, 4:11])
    assert full[5, 6, 7] and not full[0, 0, 0]


def test_block_moments_against_numpy():
    from occupy_dask.kernels.local import ellipsoid_terms
    from occupy_dask.kernels.sweep import block_moments

    rng = np.random.default_rng(3)
    shape, start, stop = (20, 22, 24), (4, 5, 6), (14, 17, 20)
    raw = rng.normal(size=(10, 12, 14)).astype(np.float32)
    raw[0, 0, :3] = 0.0
    raw[1, 1, 1], raw[2, 2, 2] = np.nan, -np.inf
    lp = rng.normal(size=raw.shape).astype(np.float32)
    sums, counts, histograms = block_moments(raw, lp, ellipsoid_terms(shape, start, stop))
    assert histograms is None
    inside = inscribed_ellipsoid(shape, start, stop)
    finite = raw[np.isfinite(raw)]
    assert list(counts) == [inside.sum(), np.count_nonzero(raw[inside] == 0), 1, 1]
    for row, values in ((1, lp), (2, lp[inside])):
        v = values.astype(np.float64)
        assert np.allclose(sums[row, :2], [v.sum(), (v * v).sum()], rtol=1e-12)
        assert (sums[row, 2], sums[row, 3]) == (v.min(), v.max())
    assert np.isnan(sums[0, 0]) and sums[0, 3] == finite.max()  # NaN propagates into the raw sums; counted apart


def test_block_moments_add_in_voxel_order_and_block_ranges_agree():
    """The sums are the sequential float64 sums (the order fixes their last bits, which the
    solvent model sees); block_ranges gives the low-passed rows' ranges, ignoring NaN and
    keeping the first of equal signed zeros, as block_moments does."""
    from occupy_dask.kernels.local import block_ranges, ellipsoid_terms
    from occupy_dask.kernels.sweep import block_moments

    rng = np.random.default_rng(8)
    shape, start, stop = (9, 10, 11), (0, 1, 2), (6, 7, 9)
    raw = (rng.normal(size=(6, 6, 7)) * 1e3).astype(np.float32)
    lp = (rng.normal(size=raw.shape) * 1e3).astype(np.float32)
    inside = inscribed_ellipsoid(shape, start, stop)
    lp[tuple(np.argwhere(~inside)[0])] = np.nan  # outside: the whole block's sums are NaN, the inside's are not
    lp[tuple(np.argwhere(inside)[0])], lp[tuple(np.argwhere(inside)[1])] = -0.0, 0.0
    terms = ellipsoid_terms(shape, start, stop)
    sums, _, _ = block_moments(raw, lp, terms)
    for row, values in ((0, raw), (1, lp), (2, lp[inside])):
        total = squares = 0.0
        for v in values.ravel().astype(np.float64).tolist():
            total += v
            squares += v * v
        if row == 1:
            assert np.isnan(total) and np.isnan(sums[row, 0])
        else:
            assert (sums[row, 0], sums[row, 1]) == (total, squares)
    ranges = block_ranges(lp, terms)
    assert ranges.tobytes() == np.array([sums[1, 2], sums[1, 3], sums[2, 2], sums[2, 3]]).tobytes()
    assert np.isfinite(ranges).all()
    empty = block_ranges(np.zeros((1, 1, 1), np.float32), ellipsoid_terms((9, 9, 9), (0, 0, 0), (1, 1, 1)))
    assert list(empty) == [0.0, 0.0, np.inf, -np.inf]  # the corner voxel lies outside the ellipsoid


def test_block_ranges_by_planes_equal_the_sweep():
    """numpy's minimum and maximum per plane, over the inside voxels gathered by bisecting each
    row, give the sequential sweep's bits: blocks of many shapes and places in many boxes (rows
    inside, outside, one voxel wide), and blocks with NaN, infinities and signed zeros at an end
    of a range, which go back to the sweep."""
    from occupy_dask.kernels.local import _block_ranges, block_ranges, ellipsoid_terms

    rng = np.random.default_rng(12)

    def sweep(values, terms):
        out = np.array([np.inf, -np.inf, np.inf, -np.inf])
        _block_ranges(values, *terms, out)
        return out

    cases = 0
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(1, 40, 3))
        start = tuple(int(rng.integers(0, n)) for n in shape)
        stop = tuple(int(rng.integers(a + 1, n + 1)) for a, n in zip(start, shape))
        block = rng.normal(size=tuple(b - a for a, b in zip(start, stop))).astype(np.float32)
        kind = rng.integers(0, 6)
        flat = block.reshape(-1)
        if kind == 1:
            flat[rng.integers(0, flat.size)] = np.nan
        elif kind == 2:
            flat[rng.integers(0, flat.size)] = rng.choice([np.inf, -np.inf])
        elif kind == 3:  # zeros of both signs at the bottom of the range
            block = np.abs(block)
            flat = block.reshape(-1)
            flat[rng.integers(0, flat.size, 3)] = rng.choice([0.0, -0.0], 3)
        elif kind == 4:  # a few values only: ties everywhere
            block = rng.choice(np.array([-1.5, 0.25, 2.0], np.float32), block.shape)
        terms = ellipsoid_terms(shape, start, stop)
        assert block_ranges(block, terms).tobytes() == sweep(block, terms).tobytes(), (shape, start, stop, kind)
        cases += 1
    assert cases == 300
    # a large block, rows of every length across the ellipsoid
    shape, start, stop = (64, 200, 150), (10, 0, 0), (30, 200, 150)
    block = rng.normal(size=(20, 200, 150)).astype(np.float32)
    terms = ellipsoid_terms(shape, start, stop)
    assert block_ranges(block, terms).tobytes() == sweep(block, terms).tobytes()


def test_numba_is_started_in_the_background_before_the_first_kernel_call():
    import subprocess
    import sys

    script = (
        "from occupy_dask.kernels.local import load_in_background, moments\n"
        "assert not moments.signatures\n"
        "load_in_background().join()\n"
        "print(len(moments.signatures))"
    )
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()[-1] == "1"
