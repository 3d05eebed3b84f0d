"""kernels/histmatch.py: ordered-bit histograms and the histogram match, against an exact match."""

import numpy as np
import pytest

from occupy_dask.kernels.histmatch import N_ORDER_BINS, HistogramMatch, code_values, order_counts, ordered_codes


def exact_match(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """OccuPy's match (skimage's, for float data): each distinct value to the reference's value
    at its quantile, by sorting both maps."""
    values, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    ref_quantiles = np.cumsum(ref_counts) / reference.size
    return np.interp(quantiles, ref_quantiles, ref_values)[inverse].reshape(source.shape)


def test_codes_sort_as_the_values_and_invert():
    values = np.array([-np.finfo(np.float32).max, -3.5, -1e-30, -0.0, 0.0, 1e-38, 0.25, 7.0, np.finfo(np.float32).max], np.float32)
    codes = ordered_codes(values)
    assert np.all(np.diff(codes.astype(np.int64)) >= 0)
    assert np.array_equal(code_values(codes), values)


def test_counts_of_blocks_add_up_to_the_counts_of_the_map():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((20, 20, 20)).astype(np.float32)
    data[0, 0, :3] = (0.0, -0.0, 1e-30)
    counts = order_counts(data)
    assert counts.shape == (N_ORDER_BINS,) and counts.sum() == data.size
    assert np.array_equal(counts, np.bincount((ordered_codes(data) >> 12).ravel(), minlength=N_ORDER_BINS))  # the compiled pass codes as the spec
    assert np.array_equal(counts, order_counts(data[:7]) + order_counts(data[7:]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_agrees_with_the_exact_match(seed):
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    occupied = rng.random(shape) > 0.8
    source = (0.1 * rng.standard_normal(shape) + occupied * rng.random(shape) * 3).astype(np.float32)
    reference = (0.05 * rng.standard_normal(shape) + (rng.random(shape) > 0.7) * rng.random(shape)).astype(np.float32)
    extremes = (float(reference.min()), float(reference.max()))
    match = HistogramMatch.between(order_counts(source[:13]) + order_counts(source[13:]), order_counts(reference), extremes)
    got = np.concatenate([match.apply(source[:13]), match.apply(source[13:])])
    want = exact_match(source, reference)
    assert got.dtype == np.float32
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999999
    span = reference.max() - reference.min()
    assert np.mean(np.abs(got - want) <= 1e-3 * span) >= 0.999
    assert got.min() >= reference.min() and got.max() <= reference.max()
    order = np.argsort(source.ravel(), kind="stable")
    assert np.all(np.diff(got.ravel()[order]) >= 0)  # monotone: the voxels keep their order


def test_a_value_outside_the_histogram_is_refused():
    match = HistogramMatch.between(order_counts(np.array([1.0, 2.0], np.float32)), order_counts(np.array([0.0, 5.0], np.float32)))
    with pytest.raises(ValueError, match="outside the histogram"):
        match.apply(np.array([100.0], np.float32))


def test_exact_zeros_map_as_one_repeated_value():
    rng = np.random.default_rng(5)
    source = (rng.random((30, 30, 30)) * 2.0 - 0.5).astype(np.float32)
    solvent = rng.random(source.shape) < 0.8
    source[solvent] = 0.0  # excluded solvent, some of it as -0.0 (a negative voxel times confidence 0)
    source[solvent & (rng.random(source.shape) < 0.5)] = -0.0
    reference = rng.standard_normal(source.shape).astype(np.float32)
    match = HistogramMatch.between(order_counts(source), order_counts(reference), (float(reference.min()), float(reference.max())))
    got, want = match.apply(source), exact_match(source, reference)
    assert len(np.unique(got[solvent])) == 1  # one value for all zeros, whatever their sign
    assert abs(float(got[solvent][0]) - float(want[solvent][0])) < 1e-3 * np.ptp(reference)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99999
