"""kernels/ballmax.py: the exact ball maximum against scipy's maximum_filter (reflect), on balls, ellipsoids and interior blocks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from occupy_dask.kernels.ballmax import ball_max, ball_max_valid
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


@pytest.mark.parametrize("size, radius", [((9, 9, 9), (4.0, 4.0, 4.0)), ((3, 3, 11), (1.0, 1.0, 5.0)), ((5, 7, 13), (2.0, 3.1, 6.2))])
def test_ball_max_across_tiles_with_ties_and_unused_widths(size, radius):
    """Rows wider than one x-tile and more rows than one y-tile of the filter's cache tiling;
    values repeat (integers, and signed zeros), and the second and third footprints leave
    half-widths unused (their runs go through the spare row buffers)."""
    data = np.random.default_rng(3).integers(-3, 4, size=(14, 45, 1100)).astype(np.float32)
    data[data == 0] = np.where(np.random.default_rng(4).random(np.count_nonzero(data == 0)) < 0.5, -0.0, 0.0)
    kernel = ball_kernel(size, radius)
    expected = ndimage.maximum_filter(data, footprint=kernel, mode="reflect")
    assert np.array_equal(ball_max(data, kernel), expected)
