"""settings.py: tau, kernels, derived settings, modification spellings."""

import numpy as np
import pytest

from occupy_dask.settings import SettingsError, ball_kernel, derive_settings, tau_for_kernel


def test_amount_and_gamma_spellings():
    def mods(**kw):
        return derive_settings((64,) * 3, 1.5, **kw).modifications

    assert mods(amplify=True, gamma=2.0)[0].exponent == mods(amplify=True, amplify_amount=0.5)[0].exponent
    assert mods(attenuate=True, gamma=2.0)[0].exponent == mods(attenuate=True)[0].exponent == 1.0
    assert mods(amplify=True, gamma=3.0)[0].exponent == -mods(amplify_amount=1 - 1 / 3.0)[0].amount
    assert [m.tag for m in mods(amplify=True, attenuate=True, gamma=2.0, sigmoid=2, pivot=0.3)] == ["ampl_2.0", "attn_2.0", "sigm_2.0-0.30"]
    assert mods(exclude_solvent=True)[0].kind == "exclude"
    assert derive_settings((64,) * 3, 1.5, amplify=True).scale_mode == "occ"  # occupancy mode when modifying
    assert derive_settings((64,) * 3, 1.5, amplify=True, occupancy=False).scale_mode == "res"
    for bad in (
        {"amplify": True, "gamma": 2.0, "amplify_amount": 0.5},
        {"amplify_amount": 1.5},
        {"gamma": 2.0},
        {"amplify": True, "gamma": 1.0},
        {"sigmoid": 2.0},
        {"sigmoid": 2.0, "pivot": 1.2},
        {"sigmoid": 0.5, "pivot": 0.3},
        {"attenuate": True, "amplify_amount": 0.5},
        {"amplify": True, "lowpass_output": 1.0},
    ):
        with pytest.raises(SettingsError):
            derive_settings((64,) * 3, 1.5, **bad)


def _root_by_bisection(n: int) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid**n + mid - 1 > 0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def test_tau_table_matches_root_rounded_to_four_decimals():
    for n in range(1, 1001):
        assert tau_for_kernel(n) == round(_root_by_bisection(n), 4), n
    assert tau_for_kernel(93) == 0.9647


def test_tau_is_scipy_s_root_rounded_without_importing_scipy_optimize():
    """The root comes from a bisection of our own, the same after rounding as scipy's brentq (as
    the version before took it) for every kernel and target-mask size tried, and loading the
    method does not import scipy.optimize (only the solvent fit does, in the background)."""
    import subprocess
    import sys

    from scipy.optimize import brentq

    rng = np.random.default_rng(3)
    for n in [*range(2, 5001), *rng.integers(5001, 10**9, 2000).tolist()]:
        expected = round(brentq(lambda x, n=n: x**n + x - 1.0, 0.0, 1.0, xtol=1e-14, rtol=1e-15), 4)
        assert tau_for_kernel(n) == expected, n
    probe = "import sys, occupy_dask.api, occupy_dask.estimation; print('scipy.optimize' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_reference_kernels_have_the_reference_voxel_counts():
    # golden A: lowpass 8 Å at 1.1 Å -> size 7, radius 3.64, n_v 203; golden G: size 5, radius 2.2 -> 33
    s = derive_settings((96, 96, 96), 1.1)
    assert s.kernel_size == (7, 7, 7)
    assert s.kernel_radius_voxels[0] == pytest.approx(8 / 2.2)
    assert s.n_v == 203 and s.tau == 0.9807
    g = derive_settings((96, 96, 96), 1.1, kernel_size=5, kernel_radius=2.2, lowpass=6)
    assert g.n_v == 33 and g.tau == 0.9246


def test_lowpass_choice_and_kernel_clipping():
    assert derive_settings((64,) * 3, 1.0).lowpass_angstrom == 8.0
    assert derive_settings((64,) * 3, 4.0).lowpass_angstrom == 12.0
    assert derive_settings((64,) * 3, 1.0, resolution=5.0, lowpass=7.0).lowpass_angstrom == 7.0
    assert derive_settings((64,) * 3, 1.0, resolution=9.0, lowpass=7.0).lowpass_angstrom == 9.0
    assert derive_settings((64,) * 3, 0.5).kernel_size == (9, 9, 9)  # floor(16) -> 17 -> clipped to 9
    assert derive_settings((64,) * 3, 5.7).kernel_size == (3, 3, 3)
    assert not derive_settings((64,) * 3, 5.0, lowpass=10.0).lowpass_applied  # exactly 2 voxels: the input itself


def test_anisotropic_kernel_is_an_ellipsoid_per_axis():
    s = derive_settings((25, 43, 73), (0.3925, 0.448, 0.4587), lowpass=2.5)
    assert s.kernel_size == (7, 5, 5)
    assert s.kernel_radius_voxels == pytest.approx((2.5 / (2 * 0.3925), 2.5 / (2 * 0.448), 2.5 / (2 * 0.4587)))
    k = ball_kernel(s.kernel_size, s.kernel_radius_voxels)
    assert k.shape == (7, 5, 5) and k[3, 2, 2] and k[0, 2, 2] and not k[0, 0, 0]


def test_reference_compatible_tiles_and_refusals():
    s = derive_settings((96,) * 3, 1.1, reference_compatible=True)
    assert (s.tile_size, s.tile_grid) == (4, 20)
    s = derive_settings((64,) * 3, 1.5, reference_compatible=True, tile_size=12)
    assert (s.tile_size, s.tile_grid) == (12, 20)
    with pytest.raises(SettingsError, match="cubic"):
        derive_settings((64, 64, 32), 1.0, reference_compatible=True)
    with pytest.raises(SettingsError, match="isotropic"):
        derive_settings((64,) * 3, (1.0, 1.0, 1.2), reference_compatible=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=4), "odd"),
        (dict(kernel_size=1), "odd"),
        (dict(tau=1.0), "between 0 and 1"),
        (dict(tau=0.0), "between 0 and 1"),
        (dict(tile_size=100), "larger than the box"),
        (dict(chunks=2), "smaller than the kernel halo"),
        (dict(lowpass=-3.0), "positive"),
        (dict(lowpass=1.5), "finer than 2 voxels"),
        (dict(resolution=1.9), "finer than 2 voxels"),
        (dict(hedge_confidence=0.5), "larger than 1"),
    ],
)
def test_nonsense_settings_are_refused(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        derive_settings((64,) * 3, 1.0, **kwargs)


def test_lowpass_of_exactly_two_voxels_is_the_input_itself():
    assert not derive_settings((64,) * 3, 1.0, lowpass=2.0).lowpass_applied
    assert derive_settings((64,) * 3, 1.0, lowpass=2.1).lowpass_applied


def test_settings_are_frozen():
    s = derive_settings((64,) * 3, 1.0)
    with pytest.raises(AttributeError):
        s.tau = 0.5
    centre = (np.array(s.kernel_size) - 1) / 2
    inside = [np.linalg.norm(np.array(i) - centre) <= s.kernel_radius_voxels[0] for i in np.ndindex(*s.kernel_size)]
    assert s.kernel.shape == s.kernel_size and s.kernel.sum() == s.n_v == sum(inside)
