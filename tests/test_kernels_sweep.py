"""kernels/sweep.py: the first pass's sweep gives the numbers of its kernels run apart."""

import numpy as np
import pytest

from occupy_dask.kernels.histogram import histogram_counts_inside, histogram_edges
from occupy_dask.kernels.local import ellipsoid_terms
from occupy_dask.kernels.sweep import block_moments


def hard_block(rng, shape, edges) -> np.ndarray:
    """Normal values with, scattered through the block, every edge and the floats either side of
    it, NaN, infinities and signed zeros."""
    near = [edges, np.nextafter(edges, np.float32(-np.inf)), np.nextafter(edges, np.float32(np.inf))]
    special = np.concatenate([*near, [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    block = rng.normal(size=shape).astype(np.float32).ravel()
    block[rng.choice(block.size, special.size, replace=False)] = special.astype(np.float32)
    return block.reshape(shape)


@pytest.mark.parametrize("region_range", [(-0.5, 1e-3), (0.0, 0.0)])  # an empty region range: counted apart, by numpy
def test_the_sweep_with_histograms_gives_the_moments_and_counts_of_each_kernel_alone(region_range):
    rng = np.random.default_rng(12)
    shape, start, stop = (24, 40, 50), (4, 0, 5), (14, 40, 45)
    block_shape = tuple(b - a for a, b in zip(start, stop))
    lp_range = (-1.5, 2.0)
    lp = hard_block(rng, block_shape, histogram_edges(*lp_range))
    raw = hard_block(rng, block_shape, histogram_edges(*region_range))
    terms = ellipsoid_terms(shape, start, stop)
    sums, counts, histograms = block_moments(raw, lp, terms, (lp_range, region_range))
    alone_sums, alone_counts, none = block_moments(raw, lp, terms)
    assert none is None
    assert sums.tobytes() == alone_sums.tobytes() and np.array_equal(counts, alone_counts)
    expected = histogram_counts_inside(lp, terms, lp_range, region_range)
    assert all(np.array_equal(a, b) for a, b in zip(histograms, expected))
    assert histograms[0].sum() > 0 and histograms[1].sum() > 0
