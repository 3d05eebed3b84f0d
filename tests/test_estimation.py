"""estimation.py: the method end to end on the golden phantom; chunk invariance, spilled low-pass, nlrc and hedge, target occupancy."""

from pathlib import Path

import dask
import numpy as np
import pytest
from scipy import ndimage

import occupy_dask
from occupy_dask.errors import ProcessingError
from occupy_dask.io.read import MapError
from occupy_dask.kernels.tiles import tile_layout
from occupy_dask.settings import ball_kernel, derive_settings, tau_for_kernel


def test_target_occupancy_by_brute_force(phantom64, tmp_path):
    mask = np.zeros_like(phantom64)
    mask[20:30, 25:35, 30:40] = 1.0
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, amplify=True, target_mask=mask) as est:
        base = est
        t = est.target_occupancy
        lp = est.sources["scale"][:, :, :]
    with pytest.raises(MapError):
        occupy_dask.estimate(phantom64, voxel_size=1.5, target_mask=mask[:-1])
    n = int(mask.sum())
    tau = tau_for_kernel(n)
    origins, _ = tile_layout(phantom64.shape, base.settings.tile_size, None)
    ts = base.settings.tile_size
    s_max = max(np.sort(lp[z : z + ts, y : y + ts, x : x + ts].ravel())[int(np.floor(tau * ts**3))] for z, y, x in origins)
    assert t.n_voxels == n and t.tau == tau
    assert t.s_max == s_max
    assert t.occupancy == pytest.approx(lp[mask > 0.5].max() / s_max)


@pytest.mark.parametrize("occupancy", [False, True])
def test_outputs_are_bit_identical_for_every_chunking(phantom96, occupancy, outputs_of):
    results = [outputs_of(phantom96, chunks=c, occupancy=occupancy) for c in (16, 33, 64, 96)]
    s_max, scale, conf, _ = results[-1]
    for s, sc, cf, _ in results[:-1]:
        assert s == s_max
        assert np.array_equal(sc, scale)
        assert np.array_equal(cf, conf)


def test_scale_is_max_filter_over_s_max(phantom96, outputs_of):
    s_max, scale, _, est = outputs_of(phantom96, chunks=40)
    kernel = ball_kernel(est.settings.kernel_size, est.settings.kernel_radius_voxels)
    expected = np.clip(ndimage.maximum_filter(phantom96, footprint=kernel, mode="reflect") / np.float32(s_max), 0, 1)
    assert np.array_equal(scale, expected)
    assert scale.dtype == np.float32


def test_non_cubic_odd_input_runs_and_is_chunk_invariant(phantom96, outputs_of):
    data = np.ascontiguousarray(phantom96[3:90, 10:75, 5:96])  # 87 x 65 x 91
    s1, sc1, cf1, est = outputs_of(data, chunks=23)
    s2, sc2, cf2, _ = outputs_of(data, chunks=91)
    assert sc1.shape == data.shape == cf1.shape
    assert s1 == s2 and np.array_equal(sc1, sc2) and np.array_equal(cf1, cf2)
    assert 0.0 <= sc1.min() and sc1.max() == 1.0
    assert 0.0 <= cf1.min() and cf1.max() <= 1.0


def test_nlrc_and_hedge_change_what_they_should(phantom96, outputs_of):
    _, scale, conf, est = outputs_of(phantom96, chunks=48)
    _, scale_n, _, est_n = outputs_of(phantom96, chunks=48, nlrc=True)
    lim = np.float32(est.confidence_limit)
    assert np.allclose(scale_n, np.clip((scale - lim) / (1 - lim), 0, 1), atol=1e-6)
    _, _, conf_h, _ = outputs_of(phantom96, chunks=48, hedge_confidence=2.0)
    assert np.all(conf_h <= conf + 1e-7) and conf_h.mean() < conf.mean()


def test_spilled_lowpass_gives_the_same_numbers(phantom96, tmp_path):
    from occupy_dask.estimation import estimate_map
    from occupy_dask.io.read import ArraySource, MapInfo
    from occupy_dask.settings import RunOptions

    s = derive_settings(phantom96.shape, 1.1, occupancy=True, chunks=40)
    info = MapInfo(path=None, name="p", shape=phantom96.shape, voxel_size=(1.1,) * 3)
    with estimate_map(ArraySource(phantom96), info, s, options=RunOptions(spill_lowpass=False)) as a:
        expected = a.scale.compute()
    with estimate_map(ArraySource(phantom96), info, s, options=RunOptions(spill_lowpass=True, temp_dir=str(tmp_path))) as b:
        assert any(tmp_path.iterdir())
        assert np.array_equal(b.scale.compute(), expected)
    assert not any(tmp_path.iterdir())  # the temporary zarr store is removed on close


def _spilled(phantom, s, tmp_path, monkeypatch):
    """``estimate_map`` of ``phantom`` (voxels of 1.1 Å) on ``s`` with its spectra and its
    low-passed map spilled to ``tmp_path`` (many slabs and pencils), and the stage labels it runs."""
    from occupy_dask import estimation, scratch
    from occupy_dask import lowpass as lowpass_stage
    from occupy_dask.io.read import ArraySource, MapInfo
    from occupy_dask.settings import RunOptions

    labels = []

    def run(*objs, label=""):
        labels.append(label)
        return estimation.default_run(*objs)

    monkeypatch.setattr(scratch, "IN_MEMORY_BYTES", 100_000)  # spill the spectra and the low-passed map
    monkeypatch.setattr(lowpass_stage, "TARGET_BLOCK_BYTES", 150_000)  # many slabs and pencils
    info = MapInfo(path=None, name="p", shape=phantom.shape, voxel_size=(1.1,) * 3)
    return estimation.estimate_map(ArraySource(phantom), info, s, run, options=RunOptions(temp_dir=str(tmp_path))), labels


def test_spilled_spectrum_gives_the_same_numbers(phantom96, tmp_path, monkeypatch):
    s = derive_settings(phantom96.shape, 1.1, occupancy=True, chunks=40)
    with occupy_dask.estimate(phantom96, voxel_size=1.1, settings=s) as a:
        expected = a.scale.compute(), a.confidence_map.compute()
    estimate, labels = _spilled(phantom96, s, tmp_path, monkeypatch)
    with estimate as b:
        occupy_dask.scratch.finish_removals()  # the spectra, removed in the background
        assert [p.name.startswith("occupy_dask_fft_") for p in tmp_path.iterdir()] == [False]  # spectra removed, lp kept
        assert np.array_equal(b.scale.compute(), expected[0])
        assert np.array_equal(b.confidence_map.compute(), expected[1])
    assert "low-pass (spectrum)" in labels and "low-pass (filtered)" in labels
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("memory", [24 << 30, 1 << 20])
def test_slabs_of_a_spilled_spectrum_are_low_passed_on_read_with_the_same_numbers(phantom96, tmp_path, monkeypatch, memory):
    """Spilled spectra and slab blocks: the low-passed map is never stored, each read transforms
    its planes of the filtered spectrum (in several reads and transforms per block here), and
    every number and every block of the low-passed map is the same as in memory, whether the
    filtered spectrum stays in the page cache between the passes (memory to spare) or not."""
    from occupy_dask import scratch
    from occupy_dask.io.read import read_with_halo

    monkeypatch.setattr(scratch, "memory_limit", lambda: memory)

    s = derive_settings(phantom96.shape, 1.1, occupancy=True, amplify=True)
    assert s.chunks[1:] == phantom96.shape[1:]  # slabs
    with occupy_dask.estimate(phantom96, voxel_size=1.1, settings=s) as a:
        lp = a.sources["lp"].array
        expected = a.s_max, a.lp_range, a.scale.compute(), a.confidence_map.compute(), a.modified().compute()
    estimate, labels = _spilled(phantom96, s, tmp_path, monkeypatch)
    with estimate as b:
        source = b.sources["lp"]
        assert isinstance(source, scratch.LowpassOnRead) and b.sources["scale"] is source
        assert source.cached == (memory > 1 << 20)
        scratch.finish_removals()  # the first spectrum, removed in the background
        (folder,) = tmp_path.iterdir()
        assert folder.name.startswith("occupy_dask_fft_") and [p.name for p in folder.iterdir()] == ["filtered.zarr"]
        assert (b.s_max, b.lp_range) == expected[:2]
        assert np.array_equal(b.scale.compute(), expected[2])
        assert np.array_equal(b.confidence_map.compute(), expected[3])
        assert np.array_equal(b.modified().compute(), expected[4])
        assert np.array_equal(source[:, :, :], lp)
        key = (slice(3, 50), slice(7, 60), slice(5, 90))
        assert np.array_equal(source[key], lp[key])  # rows and columns of a block
        halo = (5, 0, 0)
        padded = np.empty((16 + 10, 96, 96), np.float32)
        assert np.array_equal(read_with_halo(source, (40, 0, 0), (56, 96, 96), halo, out=padded), lp[35:61])
        assert np.array_equal(read_with_halo(source, (0, 0, 0), (16, 96, 96), halo), np.pad(lp[:21], ((5, 0), (0, 0), (0, 0)), mode="symmetric"))
    assert "low-pass (spectrum)" in labels and "low-pass (filtered)" in labels and "low-pass" in labels
    assert not any(tmp_path.iterdir())


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


def test_the_first_spectrum_is_removed_while_the_ranges_pass_runs(phantom96, tmp_path, monkeypatch):
    """Freeing a spilled store's blocks takes the filesystem time: the first spectrum, which only
    the filtered stage reads, is removed in a thread of its own while the next pass runs, and
    closing the estimate waits for that removal (nothing is left)."""
    import threading

    from occupy_dask import scratch

    s = derive_settings(phantom96.shape, 1.1, occupancy=True, amplify=True)
    release, removing = threading.Event(), []
    real_remove = scratch.remove_tree

    def slow_remove(path, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            removing.append(Path(path).name)
            assert release.wait(30)  # held until the ranges pass has run
        real_remove(path, *args, **kwargs)

    monkeypatch.setattr(scratch, "remove_tree", slow_remove)
    estimate, labels = _spilled(phantom96, s, tmp_path, monkeypatch)
    assert labels[:3] == ["low-pass (spectrum)", "low-pass (filtered)", "low-pass"]  # the ranges pass has run
    (folder,) = tmp_path.iterdir()
    assert removing == ["spectrum.zarr"] and sorted(p.name for p in folder.iterdir()) == ["filtered.zarr", "spectrum.zarr"]  # removal held
    release.set()
    with estimate as b:
        assert isinstance(b.sources["lp"], scratch.LowpassOnRead)
    assert not any(tmp_path.iterdir())
    assert not scratch._REMOVALS


def test_an_interrupt_while_spilling_the_lowpass_leaves_no_store(phantom96, tmp_path):
    from occupy_dask.estimation import estimate_map
    from occupy_dask.io.read import ArraySource, MapInfo
    from occupy_dask.settings import RunOptions

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
