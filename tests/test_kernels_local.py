"""kernels/local.py: local scale, the inscribed ellipsoid, block moments."""

import numpy as np

from occupy_dask.kernels.local import inscribed_ellipsoid, local_scale


def test_scale_and_ellipsoid():
    assert np.array_equal(local_scale(np.array([-1.0, 0.5, 2.0, 4.0], np.float32), 2.0), [0.0, 0.25, 1.0, 1.0])
    full = inscribed_ellipsoid((10, 12, 14), (0, 0, 0), (10, 12, 14))
    assert np.array_equal(inscribed_ellipsoid((10, 12, 14), (2, 3, 4), (7, 9, 11)), full[2:7, 3:9, 4:11])
    assert full[5, 6, 7] and not full[0, 0, 0]


def test_block_moments_against_numpy():
    from occupy_dask.kernels.local import block_moments, ellipsoid_terms

    rng = np.random.default_rng(3)
    shape, start, stop = (20, 22, 24), (4, 5, 6), (14, 17, 20)
    raw = rng.normal(size=(10, 12, 14)).astype(np.float32)
    raw[0, 0, :3] = 0.0
    raw[1, 1, 1], raw[2, 2, 2] = np.nan, -np.inf
    lp = rng.normal(size=raw.shape).astype(np.float32)
    sums, counts = block_moments(raw, lp, ellipsoid_terms(shape, start, stop))
    inside = inscribed_ellipsoid(shape, start, stop)
    finite = raw[np.isfinite(raw)]
    assert list(counts) == [inside.sum(), np.count_nonzero(raw[inside] == 0), 1, 1]
    for row, values in ((1, lp), (2, lp[inside])):
        v = values.astype(np.float64)
        assert np.allclose(sums[row, :2], [v.sum(), (v * v).sum()], rtol=1e-12)
        assert (sums[row, 2], sums[row, 3]) == (v.min(), v.max())
    assert np.isnan(sums[0, 0]) and sums[0, 3] == finite.max()  # NaN propagates into the raw sums; counted apart
