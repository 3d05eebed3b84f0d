"""kernels/modify.py: power and sigmoid factors, synthetic solvent, suppression, modify_into."""

import numpy as np
import pytest

from occupy_dask.kernels.modify import (
    NOISE_TILE,
    power_factor,
    sigmoid,
    sigmoid_factor,
    sigmoid_table_reference,
    suppress,
    synthetic_solvent,
)


def test_power_factor_leaves_low_scale_alone():
    scale = np.array([0.0, 0.03, 0.05, 0.06, 0.5, 1.0], np.float32)
    got = power_factor(scale, -1.0, 0.05)
    assert np.allclose(got, [1, 1, 1, 1 / 0.06, 2.0, 1.0], rtol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("exponent", [-1.0, 0.5, 2.0, 1.0, 0.0, -0.7, -2.5])
@pytest.mark.parametrize("limit", [0.0, 0.05])
def test_power_factor_is_numpys_power_above_the_limit(exponent, limit):
    """Zeros, negative scale and NaN at or below a limit of 0 give 1 (no division by zero)."""
    rng = np.random.default_rng(3)
    scale = np.concatenate([rng.random(4099, dtype=np.float32), np.array([0.0, -0.0, -0.2, np.nan, 1e-30, 1.0, limit], np.float32)])
    with np.errstate(all="ignore"):
        expected = np.where(scale > np.float32(limit), scale ** np.float32(exponent), np.float32(1.0)).astype(np.float32)
    got = power_factor(scale, exponent, limit)
    if exponent in (-1.0, 0.5, 2.0, 1.0, 0.0):  # the exponents numpy computes exactly (1/s, sqrt(s), s*s, s, 1)
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    else:  # powf: numba's and numpy's may round differently
        np.testing.assert_array_max_ulp(got, expected, maxulp=1)


def test_power_factor_remembers_powers_by_the_bits_of_the_scale():
    """The powers of the last scale values are kept in a small table by their bits: repeats (a
    ball maximum fills its neighbourhood), values that share a slot, both zeros, NaN and values
    at the limit give the bits of a powf per voxel."""
    import numba

    @numba.njit
    def per_voxel(scale, exponent, limit, out):
        for i in range(scale.size):
            out[i] = scale[i] ** exponent if scale[i] > limit else np.float32(1.0)

    rng = np.random.default_rng(5)
    repeats = rng.choice(rng.random(40, dtype=np.float32), 20000)  # few values, many times: the table's hits
    distinct = rng.random(100000, dtype=np.float32)  # far more values than slots: every slot taken over and over
    special = np.array([0.0, -0.0, np.nan, 0.05, np.nextafter(np.float32(0.05), np.float32(1)), 1.0, 1e-30, 0.5], np.float32)
    scale = np.concatenate([repeats, distinct, repeats[::-1], special, distinct[:5000]]).reshape(8, -1)
    for exponent, limit in ((-0.5, 0.05), (-0.7, 0.0), (3.3, 0.05)):
        expected = np.empty(scale.size, np.float32)
        per_voxel(scale.ravel(), np.float32(exponent), np.float32(limit), expected)
        got = power_factor(scale, exponent, limit)
        assert np.array_equal(got.ravel().view(np.uint32), expected.view(np.uint32)), (exponent, limit)


@pytest.mark.parametrize("power,pivot", [(1.0, 0.5), (2.0, 0.3), (5.0, 0.7), (12.0, 0.1)])
def test_sigmoid_fixes_the_pivot_and_is_monotone(power, pivot):
    assert sigmoid(np.array([pivot]), power, pivot)[0] == pytest.approx(pivot, rel=1e-12)
    x = np.linspace(0, 1, 2001)
    y = sigmoid(x, power, pivot)
    assert y[0] == 0 and y[-1] == 1 and np.all(np.diff(y) >= 0)
    if power == 1.0:
        assert np.allclose(y, x)  # power 1 is the identity
        return
    # steeper than the identity through the pivot: lower below it, higher above it
    assert np.all(y[(x > 0) & (x < pivot - 0.01)] < x[(x > 0) & (x < pivot - 0.01)])
    assert np.all(y[(x > pivot + 0.01) & (x < 1)] > x[(x > pivot + 0.01) & (x < 1)])


def test_reference_sigmoid_table_and_factor():
    table = sigmoid_table_reference(2.0, 0.3)
    assert table.shape == (100,) and table.dtype == np.float32 and table[0] == 0
    assert np.all(np.diff(table) >= 0)
    x = np.linspace(0, 1, 100).astype(np.float32)
    assert np.allclose(table, sigmoid(x, 2.0, 0.3), atol=1e-6)
    scale = np.array([0.0, 0.314, 1.0], np.float32)
    got = sigmoid_factor(scale, 2.0, 0.3, reference=True)
    assert got[0] == 1.0  # S = 0: unchanged
    assert got[1] == table[int(np.float32(0.314) * 100 - 1)] / np.float32(0.314)
    assert got[2] == table[99]


def test_synthetic_solvent_is_chunk_invariant_and_gaussian():
    shape = (70, 50, 90)
    whole = synthetic_solvent((0, 0, 0), shape, seed=3, mu=0.1, sigma=0.5)
    pieces = np.empty(shape, np.float32)
    for z in range(0, 70, 33):
        for y in range(0, 50, 16):
            for x in range(0, 90, 41):
                stop = (min(z + 33, 70), min(y + 16, 50), min(x + 41, 90))
                pieces[z : stop[0], y : stop[1], x : stop[2]] = synthetic_solvent((z, y, x), stop, seed=3, mu=0.1, sigma=0.5)
    assert np.array_equal(whole, pieces)
    assert abs(whole.mean() - 0.1) < 0.01 and abs(whole.std() - 0.5) < 0.01
    assert not np.array_equal(whole, synthetic_solvent((0, 0, 0), shape, seed=4, mu=0.1, sigma=0.5))
    assert NOISE_TILE < max(shape)  # several noise tiles were stitched


def test_suppress():
    data = np.array([1.0, 2.0, 3.0], np.float32)
    modified = data * 2
    conf = np.array([0.0, 0.5, 1.0], np.float32)
    assert np.allclose(suppress(modified, data, conf, exclude_solvent=False), [1.0, 3.0, 6.0])
    assert np.allclose(suppress(modified, data, conf, exclude_solvent=True), [0.0, 2.0, 6.0])


@pytest.mark.parametrize("exclude_solvent", [False, True])
@pytest.mark.parametrize("with_noise", [False, True])
def test_modify_into_equals_the_whole_array_arithmetic(exclude_solvent, with_noise):
    from occupy_dask.kernels.modify import modify_into

    rng = np.random.default_rng(5)
    raw, factor, confidence = (rng.normal(size=(6, 7, 8)).astype(np.float32) for _ in range(3))
    factor, confidence = np.abs(factor) * 2, np.clip(np.abs(confidence), 0, 1)
    noise = rng.normal(size=raw.shape).astype(np.float32) if with_noise else None
    modified = raw * factor
    if with_noise:
        modified = modified + noise * np.clip(np.float32(1) - factor, 0, 1)
    expected = np.clip(suppress(modified, raw, confidence, exclude_solvent), np.float32(-1), np.float32(1))
    out = np.empty_like(raw)
    assert modify_into(raw, factor, confidence, out, exclude_solvent=exclude_solvent, value_range=(-1.0, 1.0), noise=noise) is out
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        modify_into(raw, factor, confidence, np.empty(raw.shape, np.float64), exclude_solvent=exclude_solvent)
