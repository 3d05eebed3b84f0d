"""api.py: inputs from paths, numpy and dask arrays; modify; spilled inputs."""

import dask.array as da
import mrcfile
import numpy as np
import pytest

import occupy_dask
from occupy_dask.settings import SettingsError


def test_api_modify_equals_the_estimate_s_own(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, amplify=True, gamma=2.0) as est:
        own = est.modified(0).compute()
        again = occupy_dask.modify(est, gamma=2.0).compute()
        amount = occupy_dask.modify(est, amount=0.5).compute()
        sig = occupy_dask.modify(est, sigmoid=2.0, pivot=0.3).compute()
        with pytest.raises(SettingsError):
            occupy_dask.modify(est, amount=0.5, sigmoid=2.0, pivot=0.3)
    assert np.array_equal(own, again) and np.array_equal(own, amount)
    assert not np.array_equal(own, sig)


def test_api_accepts_numpy_dask_and_path(golden_dir, phantom96, outputs_of):
    a = outputs_of(phantom96, chunks=48)
    b = outputs_of(da.from_array(phantom96, chunks=30), chunks=48)
    with occupy_dask.estimate(golden_dir / "phantom96.mrc", chunks=48) as est:
        c = (est.s_max, est.scale.compute(), est.confidence_map.compute())
    assert a[0] == b[0] == c[0]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[1], c[1])
    assert np.array_equal(a[2], c[2])


def test_spilled_dask_inputs_are_removed_on_close(golden_dir, phantom96, tmp_path, monkeypatch):
    import occupy_dask.scratch

    monkeypatch.setattr(occupy_dask.scratch, "IN_MEMORY_BYTES", 0)  # spill every dask array and the low-passed map
    soldef = mrcfile.read(golden_dir / "soldef96.mrc").astype(np.float32)
    with occupy_dask.estimate(
        da.from_array(phantom96, chunks=48), voxel_size=1.1, solvent_def=da.from_array(soldef, chunks=48), temp_dir=str(tmp_path)
    ) as est:
        occupy_dask.scratch.finish_removals()  # the spectra's folder, removed in the background
        assert len(list(tmp_path.iterdir())) == 3  # map, solvent definition and the low-passed map, each in its own store
        with occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=soldef) as ref:
            assert est.s_max == ref.s_max
            assert np.array_equal(est.confidence_map.compute(), ref.confidence_map.compute())
    assert list(tmp_path.iterdir()) == []
