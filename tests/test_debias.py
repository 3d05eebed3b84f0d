"""--debias: the local scale measured above the noise floor (occupy_dask.debias).

Accuracy is asserted on phantoms that the estimator's design never saw (``HELD_OUT_SPECS``);
the model was chosen on ``DESIGN_SPECS`` (tests/phantoms.py), which are not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import mrcfile
import numpy as np
import pytest
from phantoms import HELD_OUT_SPECS, make_phantom, relative_occupancies
from scipy.stats import spearmanr

import occupy_dask
from occupy_dask import debias
from occupy_dask.debias import map_noise_floor, noise_floor_model, top_tiles
from occupy_dask.errors import ProcessingError
from occupy_dask.kernels.ballmax import ball_max
from occupy_dask.kernels.local import debiased_scale, inverse_response
from occupy_dask.kernels.tiles import tile_moments
from occupy_dask.lowpass import lowpass_numpy
from occupy_dask.settings import SettingsError, derive_settings

ACCURACY = 0.06  # largest error of a domain's relative occupancy on the held-out phantoms


@pytest.fixture(scope="module")
def phantom_a():
    return make_phantom(HELD_OUT_SPECS[0])


def _scale(data, voxel_size, **options):
    with occupy_dask.estimate(data, voxel_size=voxel_size, **options) as est:
        return est.scale.compute(), est


@pytest.mark.slow
@pytest.mark.parametrize("spec", HELD_OUT_SPECS, ids=lambda s: s.name)
def test_debiased_occupancy_is_closer_to_the_truth(spec):
    ph = make_phantom(spec)
    method, _ = _scale(ph.data, spec.voxel_size, occupancy=True)
    debiased, est = _scale(ph.data, spec.voxel_size, occupancy=True, debias=True)
    rel_method, truth = relative_occupancies(method, ph.domains, ph.occupancies)
    rel_debiased, _ = relative_occupancies(debiased, ph.domains, ph.occupancies)
    error_method, error_debiased = np.abs(rel_method - truth), np.abs(rel_debiased - truth)
    assert error_debiased.max() <= ACCURACY, (rel_debiased, truth)
    assert error_debiased.max() < error_method.max()  # the worst domain improves
    assert est.noise_floor.floor > est.solvent_model.mu
    assert 0.0 <= debiased.min() and debiased.max() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("spec", HELD_OUT_SPECS[:3] + HELD_OUT_SPECS[-3:], ids=lambda s: s.name)
def test_the_noise_floor_is_the_median_local_maximum_of_the_maps_own_noise(spec):
    """The model's floor against the truth: the method's local maximum of the phantom's noise
    alone (the map minus the same phantom without noise), low-passed as the scale data, plus
    the solvent mean. Taking the kernel's voxels as independent would put it 0.8-1.2 sigma
    higher; noise taken as flat inside the band, 0.15-0.65 sigma higher for noise that falls
    with frequency. The noise's spectrum measured in the solvent tiles matches the phantom's."""
    noisy, clean = make_phantom(spec), make_phantom(replace(spec, noise=0.0))
    with occupy_dask.estimate(noisy.data, voxel_size=spec.voxel_size, occupancy=True, debias=True) as est:
        floor, s = est.noise_floor, est.settings
    noise = lowpass_numpy(noisy.data - clean.data, s.voxel_size, s.lowpass_angstrom)
    h = np.array(s.kernel.shape) // 2
    maxima = ball_max(noise, s.kernel)[h[0] : -h[0], h[1] : -h[1], h[2] : -h[2]]
    truth = float(np.median(maxima)) + floor.mu
    assert abs(floor.floor - truth) <= 0.15 * noise.std(), (floor.floor, truth, noise.std())
    assert floor.solvent_tiles >= 100 and "measured in" in floor.spectrum
    assert abs(floor.falloff - spec.noise_bfactor) <= 0.3 * abs(spec.noise_bfactor) + 75.0, floor.falloff


@pytest.mark.parametrize(
    "bfactor, voxel, shape",
    [(-100.0, (1.2,) * 3, (96,) * 3), (0.0, (1.2,) * 3, (96,) * 3), (150.0, (1.2,) * 3, (96,) * 3), (600.0, (1.2,) * 3, (96,) * 3)]
    + [(-100.0, (1.0, 0.8, 1.3), (96, 108, 84)), (200.0, (1.5, 1.5, 0.7), (96, 108, 84))],  # anisotropic voxels, a box that is not a cube
)
def test_the_noise_spectrum_is_fitted_from_the_roughness_of_tiles(bfactor, voxel, shape):
    """Noise of a known falloff: the pooled roughness of its tiles gives back ``B`` (the
    expected steps and deviations of a tile, summed over the spectrum of the model's own box)."""
    rng = np.random.default_rng(3)
    cutoff, tile = 8.0, 12
    field = debias._unit_field(shape, voxel, cutoff, rng, bfactor).astype(np.float32)
    origins = np.argwhere(np.ones([n // tile for n in shape], dtype=bool)) * tile  # every whole tile of the box
    stats = tile_moments(field, (0, 0, 0), origins, tile)
    ids = np.arange(len(origins))[::-1].copy()  # any order: the sums go in tile order
    centred = origins + (10**4 // 2 - 48)  # the tiles at the centre of a large box: inside its ellipsoid
    roughness, count = debias.solvent_roughness(ids, stats[::-1], centred, (10**4,) * 3, tile, np.inf)
    assert count == len(origins)
    fitted = debias.fit_falloff(roughness, debias._simulation_box(voxel), voxel, cutoff, tile)
    assert abs(fitted - bfactor) <= 0.1 * abs(bfactor) + 15.0, fitted


def _model_options(s, **changes) -> dict:
    """Keywords of :func:`noise_floor_model` for settings ``s`` in occupancy mode: noise 0.1
    around 0, ten tiles of texture, a full scale of 1 (``changes`` replace any of them)."""
    options = dict(
        kernel=s.kernel,
        voxel_size=s.voxel_size,
        lowpass_angstrom=s.lowpass_angstrom,
        lowpass_applied=True,
        occupancy_mode=True,
        resolution_angstrom=None,
        mu=0.0,
        sigma_lowpass=0.1,
        tile_means=np.ones(10),
        tile_variances=np.full(10, 0.05),
        s_max=1.0,
        value_max=1.5,
    )
    return {**options, **changes}


@pytest.mark.parametrize("roughness", [0.001, 50.0])
def test_solvent_no_noise_of_the_band_can_be_leaves_the_noise_flat_and_says_so(roughness):
    """Tiles far smoother or rougher than any noise of the band (flattened or filtered solvent):
    no falloff is fitted at the edge of its range; the noise stays flat and the log says why."""
    s = derive_settings((128, 128, 128), 1.0, occupancy=True, debias=True)
    assert debias.fit_falloff(roughness, (64, 64, 64), s.voxel_size, s.lowpass_angstrom, s.tile_size) is None
    options = _model_options(s, tile_size=s.tile_size)
    floor, flat = noise_floor_model(**options, roughness=(roughness, 321)), noise_floor_model(**options)
    assert (floor.falloff, floor.solvent_tiles, floor.floor) == (0.0, 0, flat.floor)
    assert floor.spectrum.startswith("flat: the roughness of the 321 tiles") and "masked, flattened or filtered" in floor.spectrum


def test_too_few_solvent_tiles_leave_the_noise_flat_and_say_so(data_dir):
    """EMD-1832 (64^3): fewer than MIN_SOLVENT_TILES tiles of confident solvent lie wholly
    inside its particle sphere (zeros outside it), so its noise is taken as flat in the band."""
    with occupy_dask.estimate(str(data_dir / "emd_1832.map"), occupancy=True, debias=True) as est:
        floor = est.noise_floor
    assert (floor.falloff, floor.solvent_tiles) == (0.0, 0) and f"fewer than {debias.MIN_SOLVENT_TILES} tiles" in floor.spectrum


def test_debiased_scale_in_resolution_mode_is_closer_to_the_truth(phantom_a):
    """Resolution mode (the raw map's scale, noise flat up to --resolution): a held-out phantom."""
    method, _ = _scale(phantom_a.data, 0.8, occupancy=False, resolution=4.0)
    debiased, est = _scale(phantom_a.data, 0.8, occupancy=False, resolution=4.0, debias=True)
    rel_method, truth = relative_occupancies(method, phantom_a.domains, phantom_a.occupancies)
    rel_debiased, _ = relative_occupancies(debiased, phantom_a.domains, phantom_a.occupancies)
    assert "resolution 4" in est.noise_floor.correlation
    assert np.abs(rel_debiased - truth).max() <= 0.1 < np.abs(rel_method - truth).max()  # the method: 0.24
    assert 0.0 <= debiased.min() and debiased.max() == 1.0


def test_a_solvent_definition_gives_the_noise_floor_its_solvent(phantom_a):
    """The noise floor uses the solvent model of --solvent-def's region (either polarity)."""
    far = (phantom_a.domains < 0) & (np.abs(phantom_a.data) < 0.5)  # no density at 0.3 of the peak, and not the domains' blur
    far[:, :, 60:] = False  # part of the solvent, so that the model differs from the default one
    floors = []
    for definition in (far, ~far):
        debiased, est = _scale(phantom_a.data, 0.8, occupancy=True, debias=True, solvent_def=definition.astype(np.float32))
        rel, truth = relative_occupancies(debiased, phantom_a.domains, phantom_a.occupancies)
        assert (est.noise_floor.mu, est.noise_floor.sigma) == (est.solvent_model.mu, est.solvent_model.sigma)
        assert np.abs(rel - truth).max() <= ACCURACY
        floors.append(est.noise_floor.floor)
    _, default = _scale(phantom_a.data, 0.8, occupancy=True, debias=True)
    assert floors[0] == floors[1] != default.noise_floor.floor


def test_a_poor_solvent_model_says_the_noise_floor_is_unreliable(phantom_a):
    data = phantom_a.data.copy()
    data[4:8, 4:8, 4:8] = -30.0  # a deep artefact: most of the histogram's range is solvent
    with occupy_dask.estimate(data, voxel_size=0.8, occupancy=True, debias=True) as est:
        warnings = est.warnings
    assert any(w.startswith("potentially bad solvent model") for w in warnings)
    assert "the noise floor of --debias comes from that solvent model and is unreliable too" in warnings


def test_chunks_do_not_change_the_debiased_scale(phantom_a):
    for occupancy in (True, False):
        a, _ = _scale(phantom_a.data, 0.8, occupancy=occupancy, debias=True, resolution=4.0)
        b, _ = _scale(phantom_a.data, 0.8, occupancy=occupancy, debias=True, resolution=4.0, chunks=40)
        assert np.array_equal(a, b)


def test_debiased_scale_ranks_voxels_as_the_method_on_real_maps(data_dir):
    for occupancy in (True, False):
        with occupy_dask.estimate(str(data_dir / "emd_1832.map"), occupancy=occupancy, debias=True) as est:
            debiased, confidence = est.scale.compute(), est.confidence_map.compute()
        method, _ = _scale(str(data_dir / "emd_1832.map"), None, occupancy=occupancy)
        confident = confidence > 0.5
        assert confident.sum() > 1000
        assert 0.0 <= debiased.min() and debiased.max() <= 1.0
        assert spearmanr(debiased[confident], method[confident]).statistic >= 0.95


def test_modified_maps_use_the_debiased_scale(phantom_a):
    with occupy_dask.estimate(phantom_a.data, voxel_size=0.8, occupancy=True, debias=True) as est:
        scale, confidence = est.scale.compute(), est.confidence_map.compute()
        amplified = occupy_dask.modify(est, amount=1.0).compute()
        lo, hi = est.raw_range
    factor = np.where(scale > 0.05, 1.0 / np.where(scale > 0.05, scale, 1.0), 1.0)
    expected = np.clip(phantom_a.data * factor * confidence + phantom_a.data * (1 - confidence), lo, hi)
    assert np.allclose(amplified, expected, rtol=1e-5, atol=1e-6)


def test_target_occupancy_is_debiased(phantom_a):
    weakest = int(np.argmin(phantom_a.occupancies))
    mask = (phantom_a.domains == weakest).astype(np.float32)
    with occupy_dask.estimate(phantom_a.data, voxel_size=0.8, occupancy=True, target_mask=mask) as est:
        plain = est.target_occupancy.occupancy
    with occupy_dask.estimate(phantom_a.data, voxel_size=0.8, occupancy=True, target_mask=mask, debias=True) as est:
        target = est.target_occupancy
        assert target.noise_floor is est.noise_floor
        debiased = target.occupancy
    truth = min(phantom_a.occupancies) / max(phantom_a.occupancies)
    assert 0.0 <= debiased < plain
    assert abs(debiased - truth) < abs(plain - truth)


@pytest.mark.parametrize("options", [{"reference_compatible": True}, {"nlrc": True}])
def test_debias_conflicts_are_usage_errors(options):
    with pytest.raises(SettingsError, match="--debias"):
        derive_settings((64, 64, 64), 1.0, debias=True, **options)


def test_cli_debias_logs_and_plots_the_noise_floor(tmp_path, data_dir):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "occupy_dask.cli", "-i", str(data_dir / "emd_1832.map"), "--debias", "--occupancy", "--plot", "-d", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    log = (out / "log_emd_1832.txt").read_text()
    assert "Noise floor" in log and "Noise floor as scale" in log and "Signal texture kappa" in log
    png = out / "noiseFloor_emd_1832.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000
    with mrcfile.open(out / "scale_occ_emd_1832.mrc") as mrc:
        assert 0.0 <= mrc.data.min() and mrc.data.max() <= 1.0
    refused = subprocess.run(
        [sys.executable, "-m", "occupy_dask.cli", "-i", str(data_dir / "emd_1832.map"), "--debias", "--reference-compatible", "-d", str(out)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--debias" in refused.stderr


def test_a_map_whose_signal_does_not_rise_above_the_noise_floor_is_refused(tmp_path, data_dir):
    run = subprocess.run(
        [sys.executable, "-m", "occupy_dask.cli", "-i", str(data_dir / "emd_3001.map"), "--debias", "-d", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "does not rise above the noise floor" in run.stderr and "--resolution" in run.stderr
    assert not list(tmp_path.glob("*.mrc"))


def test_no_confident_solvent_is_refused():
    class Table:
        fraction = np.full(1000, 0.7)

    s = derive_settings((64, 64, 64), 1.0, debias=True)
    with pytest.raises(ProcessingError, match="confident solvent"):
        map_noise_floor(s, None, Table(), np.ones(1000), [], np.zeros((0, 3)), 1.0, 1.0)


def test_the_per_voxel_kernel_matches_the_numpy_inverse():
    rng = np.random.default_rng(3)
    s = derive_settings((64, 64, 64), 1.0, occupancy=True)
    texture = {"tile_means": np.array([0.4, 0.35]), "tile_variances": np.array([0.03, 0.02])}
    floor = noise_floor_model(**_model_options(s, mu=0.01, s_max=0.8, value_max=1.2, **texture))
    maxima = rng.uniform(-0.2, 2.0, (20, 30, 40)).astype(np.float32)
    grid = floor.table_start + floor.table_step * np.arange(len(floor.table))
    m = maxima.astype(np.float64)
    inverse = np.where(m > grid[-1], m - floor.offset, np.interp(m, grid, floor.table.astype(np.float64)))
    expected = np.clip(inverse / floor.signal_max, 0, 1).astype(np.float32)
    assert np.allclose(debiased_scale(maxima, floor), expected, atol=1e-6)
    assert [inverse_response(v, floor) for v in maxima.ravel()[:50]] == pytest.approx(inverse.ravel()[:50], abs=1e-6)
    # the inverse undoes the response, is 0 at and below the floor and 1 at the full-scale reference
    levels = floor.signal_levels[5:-5]
    assert np.allclose([floor.signal(r) for r in floor.response[5:-5]], levels, atol=1e-3 * levels.max())
    assert [inverse_response(floor.floor - 0.1, floor), inverse_response(floor.floor, floor)] == [0.0, 0.0]
    assert debiased_scale(np.array([0.8], np.float32), floor)[0] == pytest.approx(1.0)
    assert np.all(np.diff(floor.response) >= 0) and floor.response[-1] - floor.signal_levels[-1] == pytest.approx(floor.mu, abs=0.05)


def test_tile_moments_and_top_tiles():
    rng = np.random.default_rng(4)
    block = rng.normal(size=(30, 31, 32)).astype(np.float32)
    origins = np.array([[12, 10, 8], [15, 19, 20], [10, 10, 10]])
    stats = tile_moments(block, (10, 10, 8), origins, 6)
    for (z, y, x), row in zip(origins - (10, 10, 8), stats):
        tile = block[z : z + 6, y : y + 6, x : x + 6].astype(np.float64)
        steps = sum((np.diff(tile, axis=axis) ** 2).sum() for axis in range(3))
        assert row == pytest.approx([tile.sum(), (tile * tile).sum(), steps, tile.max()])
    means, variances = top_tiles(np.array([7, 3, 5]), np.array([[2.0, 10.0], [4.0, 20.0], [4.0, 9.0]]), 2, count=2)
    assert means.tolist() == [2.0, 2.0]  # equal means: lower id first (3, then 5)
    assert variances.tolist() == [6.0, 0.5]


def test_a_local_cluster_of_processes_gives_the_same_debiased_maps(tmp_path, phantom):
    from occupy_dask.api import run_map
    from occupy_dask.cluster import ClusterSpec, connect
    from occupy_dask.settings import RunOptions

    settings = {"chunks": 32, "amplify": True, "debias": True}
    run_map(phantom, RunOptions(output_dir=tmp_path / "threads"), **settings)
    with connect(ClusterSpec(workers=2, threads=1), quiet=True) as runner:
        run_map(phantom, RunOptions(output_dir=tmp_path / "processes"), runner=runner, **settings)
    for name in ("scale_occ_phantom96.mrc", "conf_phantom96.mrc", "out_phantom96.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "threads" / name), mrcfile.read(tmp_path / "processes" / name)), name
    assert "Noise floor" in (tmp_path / "processes" / "log_phantom96.txt").read_text()


def test_kernel_samples_gather_the_kernel_around_each_centre():
    field = np.random.default_rng(0).standard_normal((30, 34, 26))
    kernel = derive_settings((300, 400, 500), (1.0, 0.9, 1.3), occupancy=True).kernel  # anisotropic: 9 x 9 x 7
    half = np.array(kernel.shape) // 2
    centres = half + (np.random.default_rng(1).random((200, 3)) * (np.array(field.shape) - 2 * half)).astype(np.int64)
    expected = [[field[tuple(c + o)] for o in np.argwhere(kernel) - half] for c in centres]
    assert np.array_equal(debias._kernel_samples(field, kernel, centres), np.array(expected, dtype=np.float32))


def test_kernel_maxima_are_numpys_float32_maxima():
    from occupy_dask.kernels.local import kernel_maxima

    rng = np.random.default_rng(5)
    shape = (1.0 + 0.3 * rng.standard_normal((300, 57))).astype(np.float32)
    noise = rng.standard_normal((300, 57)).astype(np.float32)
    levels = np.linspace(0.0, 3.0, 17)
    expected = np.array([np.max(np.float32(v) * shape + noise, axis=1) for v in levels])
    assert np.array_equal(kernel_maxima(levels, shape, noise), expected)
