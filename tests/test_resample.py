"""resample.py: the --max-box crop and the way back, slab by slab and as the reference does it."""

import mrcfile
import numpy as np
import pytest

from occupy_dask.errors import SettingsError
from occupy_dask.io.read import ArraySource
from occupy_dask.resample import (
    fourier_crop,
    fourier_crop_reference,
    fourier_pad,
    fourier_pad_reference,
    reduced_shape,
    reduced_voxel_size,
)


def band_limited(shape, keep, seed=0):
    """A real map with only the frequencies a crop to ``keep`` voxels per axis keeps (none at its Nyquist)."""
    rng = np.random.default_rng(seed)
    spectrum = np.zeros((shape[0], shape[1], shape[2] // 2 + 1), complex)
    for z in [*range(0, keep[0] // 2), *range(shape[0] - keep[0] // 2 + 1, shape[0])]:
        for y in [*range(0, keep[1] // 2), *range(shape[1] - keep[1] // 2 + 1, shape[1])]:
            spectrum[z, y, : keep[2] // 2] = rng.standard_normal(keep[2] // 2) + 1j * rng.standard_normal(keep[2] // 2)
    return np.fft.irfftn(spectrum, s=shape, axes=(0, 1, 2)).astype(np.float32)


def test_reduced_shape_keeps_the_aspect_and_even_sizes():
    assert reduced_shape((96, 96, 96), 64) == (64, 64, 64)
    assert reduced_shape((96, 96, 96), 128) is None and reduced_shape((96, 96, 96), None) is None
    assert reduced_shape((100, 80, 60), 50) == (50, 40, 30)
    assert reduced_voxel_size((1.1, 1.1, 1.1), (96,) * 3, (64,) * 3) == pytest.approx((1.65,) * 3)
    with pytest.raises(SettingsError, match="even"):
        reduced_shape((96, 96, 96), 63)


def test_crop_of_a_band_limited_map_samples_it_on_the_coarser_grid():
    data = band_limited((48, 40, 32), (24, 20, 16))
    small, (lo, hi) = fourier_crop(ArraySource(data), data.shape, (24, 20, 16))
    assert (lo, hi) == (float(data.min()), float(data.max()))
    assert np.allclose(small, data[::2, ::2, ::2], atol=1e-5 * np.abs(data).max())  # same box, every second voxel
    back = fourier_pad(small, data.shape, slab_planes=7).compute()
    assert np.allclose(back, data, atol=1e-5 * np.abs(data).max())


def test_slab_crop_and_pad_agree_with_the_reference_whole_array_way():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((48, 48, 48)).astype(np.float32)
    small, _ = fourier_crop(ArraySource(data), data.shape, (32, 32, 32))
    ref_small = fourier_crop_reference(data, (32, 32, 32))
    assert np.abs(small - ref_small).max() <= 1e-5 * np.abs(ref_small).max()
    back = fourier_pad(ref_small, data.shape, slab_planes=16).compute()
    ref_back = fourier_pad_reference(ref_small, data.shape)
    assert np.abs(back - ref_back).max() <= 1e-5 * np.abs(ref_back).max()


def test_a_preview_keeps_the_box_in_angstrom(tmp_path, golden_dir):
    from occupy_dask.api import run_map
    from occupy_dask.settings import RunOptions

    result = run_map(golden_dir / "phantom96.mrc", RunOptions(output_dir=tmp_path), max_box=64, attenuate=True, subtraction_masks=True)
    with mrcfile.open(result.outputs["scale"]) as scale, mrcfile.open(golden_dir / "phantom96.mrc") as source:
        assert scale.data.shape == (64, 64, 64) and scale.voxel_size.x == pytest.approx(1.65, abs=1e-5)
        assert np.allclose(scale.header.cella.tolist(), source.header.cella.tolist())
    with mrcfile.open(result.outputs["modified_0"]) as modified, mrcfile.open(result.outputs["submask_0"]) as mask:
        assert modified.data.shape == (96, 96, 96) and modified.voxel_size.x == pytest.approx(1.1, abs=1e-5)
        assert mask.data.shape == (96, 96, 96) and 0.0 <= mask.data.min() < mask.data.max() <= 1.0  # on the input's grid too
    assert result.estimate.settings.full_shape == (96, 96, 96) and result.estimate.settings.shape == (64, 64, 64)


def test_a_preview_of_a_permuted_anisotropic_map_keeps_each_axis_in_angstrom(tmp_path, data_dir):
    from occupy_dask.api import run_map
    from occupy_dask.io.read import open_map
    from occupy_dask.settings import RunOptions

    result = run_map(data_dir / "emd_3001.map", RunOptions(output_dir=tmp_path), max_box=64, amplify=True)
    with open_map(data_dir / "emd_3001.map") as source, open_map(result.outputs["scale"]) as preview:
        assert preview.info.shape == (22, 38, 64) and preview.info.axis_order == source.info.axis_order
        for v_in, n_in, v_out, n_out in zip(source.info.voxel_size, source.info.shape, preview.info.voxel_size, preview.info.shape):
            assert v_out == pytest.approx(v_in * n_in / n_out, rel=1e-5)  # the same extent in Å along every stored axis
    with open_map(result.outputs["modified_0"]) as full, open_map(data_dir / "emd_3001.map") as source:
        assert full.info.shape == source.info.shape and full.info.voxel_size == pytest.approx(source.info.voxel_size)


def test_modify_of_a_preview_says_how_to_get_the_full_size_map(golden_dir):
    import occupy_dask

    with occupy_dask.estimate(golden_dir / "phantom96.mrc", max_box=64, amplify=True) as est:
        assert est.modified(0).shape == (96, 96, 96) and est.scale.shape == (64, 64, 64)
        with pytest.raises(SettingsError, match="est.modified"):
            occupy_dask.modify(est, gamma=2.0)
