import dask
import dask.array as da
import mrcfile
import numpy as np
import pytest
from scipy import ndimage

import occupy_dask
from occupy_dask.errors import ProcessingError
from occupy_dask.settings import ball_kernel


@pytest.fixture(scope="module")
def phantom96(golden_dir):
    return mrcfile.read(golden_dir / "phantom96.mrc").astype(np.float32)


def _outputs(data, **kw):
    with occupy_dask.estimate(data, voxel_size=1.1, **kw) as est:
        return est.s_max, est.scale.compute(), est.confidence_map.compute(), est


@pytest.mark.parametrize("occupancy", [False, True])
def test_outputs_are_bit_identical_for_every_chunking(phantom96, occupancy):
    results = [_outputs(phantom96, chunks=c, occupancy=occupancy) for c in (16, 33, 64, 96)]
    s_max, scale, conf, _ = results[-1]
    for s, sc, cf, _ in results[:-1]:
        assert s == s_max
        assert np.array_equal(sc, scale)
        assert np.array_equal(cf, conf)


def test_scale_is_max_filter_over_s_max(phantom96):
    s_max, scale, _, est = _outputs(phantom96, chunks=40)
    kernel = ball_kernel(est.settings.kernel_size, est.settings.kernel_radius_voxels)
    expected = np.clip(ndimage.maximum_filter(phantom96, footprint=kernel, mode="reflect") / np.float32(s_max), 0, 1)
    assert np.array_equal(scale, expected)
    assert scale.dtype == np.float32


def test_full_scale_reference_is_the_largest_tile_quantile(phantom96):
    s_max, _, _, est = _outputs(phantom96, chunks=40, tile_size=12)
    t = 12
    idx = int(np.floor(est.settings.tau * t**3))
    z, y, x = (int(c - t / 2) for c in est.best_tile_centre)
    tile = np.sort(phantom96[z : z + t, y : y + t, x : x + t].ravel())
    assert tile[idx] == np.float32(s_max)


def test_api_accepts_numpy_dask_and_path(golden_dir, phantom96):
    a = _outputs(phantom96, chunks=48)
    b = _outputs(da.from_array(phantom96, chunks=30), chunks=48)
    with occupy_dask.estimate(golden_dir / "phantom96.mrc", chunks=48) as est:
        c = (est.s_max, est.scale.compute(), est.confidence_map.compute())
    assert a[0] == b[0] == c[0]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[1], c[1])
    assert np.array_equal(a[2], c[2])


def test_non_cubic_odd_input_runs_and_is_chunk_invariant(phantom96):
    data = np.ascontiguousarray(phantom96[3:90, 10:75, 5:96])  # 87 x 65 x 91
    s1, sc1, cf1, est = _outputs(data, chunks=23)
    s2, sc2, cf2, _ = _outputs(data, chunks=91)
    assert sc1.shape == data.shape == cf1.shape
    assert s1 == s2 and np.array_equal(sc1, sc2) and np.array_equal(cf1, cf2)
    assert 0.0 <= sc1.min() and sc1.max() == 1.0
    assert 0.0 <= cf1.min() and cf1.max() <= 1.0


def test_solvent_definition_either_polarity(golden_dir, phantom96):
    soldef = mrcfile.read(golden_dir / "soldef96.mrc").astype(np.float32)
    with occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=soldef) as a:
        with occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=1.0 - soldef) as b:
            assert a.solvent_region != b.solvent_region  # the other side of the mask was chosen
            assert a.solvent_model.mu == pytest.approx(b.solvent_model.mu, abs=1e-6)
            assert a.solvent_model.sigma == pytest.approx(b.solvent_model.sigma, rel=1e-4)


def test_nlrc_and_hedge_change_what_they_should(phantom96):
    _, scale, conf, est = _outputs(phantom96, chunks=48)
    _, scale_n, _, est_n = _outputs(phantom96, chunks=48, nlrc=True)
    lim = np.float32(est.confidence_limit)
    assert np.allclose(scale_n, np.clip((scale - lim) / (1 - lim), 0, 1), atol=1e-6)
    _, _, conf_h, _ = _outputs(phantom96, chunks=48, hedge_confidence=2.0)
    assert np.all(conf_h <= conf + 1e-7) and conf_h.mean() < conf.mean()


def test_spilled_lowpass_gives_the_same_numbers(phantom96, tmp_path):
    from occupy_dask.estimation import estimate_map
    from occupy_dask.io.read import ArraySource, MapInfo
    from occupy_dask.settings import RunOptions, derive_settings

    s = derive_settings(phantom96.shape, 1.1, occupancy=True, chunks=40)
    info = MapInfo(path=None, name="p", shape=phantom96.shape, voxel_size=(1.1,) * 3)
    with estimate_map(ArraySource(phantom96), info, s, options=RunOptions(spill_lowpass=False)) as a:
        expected = a.scale.compute()
    with estimate_map(ArraySource(phantom96), info, s, options=RunOptions(spill_lowpass=True, temp_dir=str(tmp_path))) as b:
        assert any(tmp_path.iterdir())
        assert np.array_equal(b.scale.compute(), expected)
    assert not any(tmp_path.iterdir())  # the temporary zarr store is removed on close


def test_spilled_spectrum_gives_the_same_numbers(phantom96, tmp_path, monkeypatch):
    from occupy_dask import estimation
    from occupy_dask import lowpass as lowpass_stage
    from occupy_dask.io.read import ArraySource, MapInfo
    from occupy_dask.settings import RunOptions, derive_settings

    s = derive_settings(phantom96.shape, 1.1, occupancy=True, chunks=40)
    info = MapInfo(path=None, name="p", shape=phantom96.shape, voxel_size=(1.1,) * 3)
    with estimation.estimate_map(ArraySource(phantom96), info, s) as a:
        expected = a.scale.compute(), a.confidence_map.compute()
    labels = []

    def run(*objs, label=""):
        labels.append(label)
        return estimation.default_run(*objs)

    monkeypatch.setattr(estimation, "IN_MEMORY_BYTES", 100_000)  # spill the spectra and the low-passed map
    monkeypatch.setattr(lowpass_stage, "TARGET_BLOCK_BYTES", 150_000)  # many slabs and pencils
    with estimation.estimate_map(ArraySource(phantom96), info, s, run, options=RunOptions(temp_dir=str(tmp_path))) as b:
        assert [p.name.startswith("occupy_dask_fft_") for p in tmp_path.iterdir()] == [False]  # spectra removed, lp kept
        assert np.array_equal(b.scale.compute(), expected[0])
        assert np.array_equal(b.confidence_map.compute(), expected[1])
    assert "low-pass (spectrum)" in labels and "low-pass (filtered)" in labels
    assert not any(tmp_path.iterdir())


def test_spilled_dask_inputs_are_removed_on_close(golden_dir, phantom96, tmp_path, monkeypatch):
    import occupy_dask.scratch

    monkeypatch.setattr(occupy_dask.scratch, "IN_MEMORY_BYTES", 0)  # spill every dask array
    soldef = mrcfile.read(golden_dir / "soldef96.mrc").astype(np.float32)
    with occupy_dask.estimate(
        da.from_array(phantom96, chunks=48), voxel_size=1.1, solvent_def=da.from_array(soldef, chunks=48), temp_dir=str(tmp_path)
    ) as est:
        assert len(list(tmp_path.iterdir())) == 2  # map and solvent definition, each in its own zarr store
        with occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=soldef) as ref:
            assert est.s_max == ref.s_max
            assert np.array_equal(est.confidence_map.compute(), ref.confidence_map.compute())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", [(20, 21, 22), (21, 21, 21)])
def test_finite_median_is_exact(shape):
    from occupy_dask.estimation import default_run
    from occupy_dask.io.read import ArraySource
    from occupy_dask.reductions import finite_median

    data = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    data[data > 2.5] = np.nan
    data.flat[::997] = np.inf
    finite = data[np.isfinite(data)]
    median, bad = finite_median(ArraySource(data), shape, (8, 9, 10), default_run)
    assert bad == data.size - finite.size
    assert median == pytest.approx(float(np.median(finite)), rel=1e-6, abs=1e-7)


def test_allow_nonfinite_replaces_with_the_median(phantom96):
    data = phantom96.copy()
    data[3, 4, 5] = np.nan
    data[10, 10, 10:12] = -np.inf
    with occupy_dask.estimate(data, voxel_size=1.1, chunks=40, allow_nonfinite=True) as est:
        scale = est.scale.compute()
        assert "replaced 3 NaN or infinite voxels" in est.warnings[0]
    fixed = data.copy()
    fixed[~np.isfinite(fixed)] = np.median(phantom96[np.isfinite(data)])
    with occupy_dask.estimate(fixed, voxel_size=1.1, chunks=40) as ref:
        assert np.array_equal(scale, ref.scale.compute())
    with pytest.raises(ProcessingError, match="1 NaN and 2 infinite"):
        occupy_dask.estimate(data, voxel_size=1.1, chunks=40)


def test_one_pass_and_two_pass_reductions_agree(phantom96, monkeypatch):
    from occupy_dask import reductions

    one = _outputs(phantom96, chunks=32)
    monkeypatch.setattr(reductions, "_known_histogram_ranges", lambda sources, ranges: None)  # ranges unknown: histograms in a second pass
    two = _outputs(phantom96, chunks=32)
    assert one[0] == two[0]
    assert np.array_equal(one[1], two[1]) and np.array_equal(one[2], two[2])
    assert np.array_equal(one[3].confidence.fraction, two[3].confidence.fraction)
    assert (one[3].solvent_model.mu, one[3].solvent_model.sigma) == (two[3].solvent_model.mu, two[3].solvent_model.sigma)


def test_an_interrupt_while_spilling_the_lowpass_leaves_no_store(phantom96, tmp_path):
    from occupy_dask.estimation import estimate_map
    from occupy_dask.io.read import ArraySource, MapInfo
    from occupy_dask.settings import RunOptions, derive_settings

    s = derive_settings(phantom96.shape, 1.1, occupancy=True, chunks=40)
    info = MapInfo(path=None, name="p", shape=phantom96.shape, voxel_size=(1.1,) * 3)

    def interrupted(*objs, label=""):
        if label == "low-pass":
            assert any(tmp_path.iterdir())  # the store exists while it is written
            raise KeyboardInterrupt
        return dask.compute(*objs)

    with pytest.raises(KeyboardInterrupt):
        estimate_map(ArraySource(phantom96), info, s, interrupted, options=RunOptions(spill_lowpass=True, temp_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())
