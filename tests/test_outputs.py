"""outputs.py: MRC, zarr and OME-Zarr outputs of one run, output names and formats."""

import json

import mrcfile
import numpy as np
import pytest
import zarr

from occupy_dask.api import run_map
from occupy_dask.settings import RunOptions

CHUNKS = 40


SETTINGS = {"chunks": CHUNKS, "amplify": True}


@pytest.fixture(scope="module")
def mrc_run(tmp_path_factory, phantom):
    out = tmp_path_factory.mktemp("mrc")
    result = run_map(phantom, RunOptions(output_dir=out, save_all_maps=True), **SETTINGS)
    return out, result


def test_zarr_output_equals_mrc_and_carries_the_geometry(tmp_path, phantom, mrc_run):
    mrc_dir, mrc_result = mrc_run
    result = run_map(phantom, RunOptions(output_dir=tmp_path, output_format="zarr", save_all_maps=True), **SETTINGS)
    assert set(result.outputs) == set(mrc_result.outputs) - {"chimerax"}
    for key, path in result.outputs.items():
        if key == "log":
            continue
        assert path.suffix == ".zarr" and path.is_dir()
        z = zarr.open_array(str(path), mode="r")
        with mrcfile.open(mrc_result.outputs[key]) as m:
            assert np.array_equal(z[:], m.data), key
            meta = z.attrs["occupy_dask"]
            stats = meta["statistics"]
            assert stats["min"] == pytest.approx(float(m.header.dmin)) and stats["max"] == pytest.approx(float(m.header.dmax))
            assert stats["mean"] == pytest.approx(float(m.header.dmean), abs=1e-6)
        assert z.chunks == (CHUNKS, CHUNKS, CHUNKS)  # one zarr chunk per dask chunk
        assert z.metadata.dimension_names == ("z", "y", "x")
        assert meta["voxel_size_angstrom"] == pytest.approx([1.1, 1.1, 1.1])
        assert meta["axis_order"] == {"mapc": 1, "mapr": 2, "maps": 3}
        codecs = json.loads((path / "zarr.json").read_text())["codecs"]
        assert any(c["name"] == "zstd" for c in codecs)
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_ome_zarr_is_read_by_ome_zarr_py_with_voxel_size_and_pyramid(tmp_path, phantom, mrc_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    _, mrc_result = mrc_run
    result = run_map(phantom, RunOptions(output_dir=tmp_path, output_map="amplified.ome.zarr"), **SETTINGS)
    path = result.outputs["modified_0"]
    assert path.name == "amplified.ome.zarr" and result.outputs["scale"].name == "scale_occ_phantom96.ome.zarr"
    image = [node for node in Reader(parse_url(str(path)))() if node.load(Multiscales)][0]
    levels = [np.asarray(level) for level in image.data]
    assert [lv.shape for lv in levels] == [(96, 96, 96), (48, 48, 48), (24, 24, 24)]
    reference = mrcfile.read(mrc_result.outputs["modified_0"])
    assert np.array_equal(levels[0], reference)
    means = reference.astype(np.float64).reshape(48, 2, 48, 2, 48, 2).mean(axis=(1, 3, 5)).astype(np.float32)
    assert np.allclose(levels[1], means, atol=1e-6)
    transforms = image.metadata["coordinateTransformations"]
    scales = [[t for t in level if t["type"] == "scale"][0]["scale"] for level in transforms]
    assert scales == [pytest.approx([1.1] * 3), pytest.approx([2.2] * 3), pytest.approx([4.4] * 3)]
    assert [a["unit"] for a in image.metadata["axes"]] == ["angstrom"] * 3
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]


def test_zarr_and_ome_zarr_inputs_give_the_mrc_numbers(tmp_path, phantom, mrc_run):
    _, mrc_result = mrc_run
    data = mrcfile.read(phantom)
    plain = zarr.create_array(str(tmp_path / "phantom96.zarr"), shape=data.shape, chunks=(32, 32, 32), dtype="float32")
    plain[:] = data
    plain.attrs["occupy_dask"] = {"voxel_size_angstrom": [1.1, 1.1, 1.1]}
    # an OME-Zarr image written by another tool, voxel size in nanometres
    group = zarr.open_group(str(tmp_path / "other.ome.zarr"), mode="w", zarr_format=3)
    level = group.create_array("s0", shape=data.shape, chunks=(48, 48, 48), dtype="float32")
    level[:] = data
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    datasets = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0.11, 0.11, 0.11]}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    for source, name in ((tmp_path / "phantom96.zarr", "phantom96"), (tmp_path / "other.ome.zarr", "other")):
        result = run_map(source, RunOptions(output_dir=tmp_path / name), **SETTINGS)
        assert result.estimate.info.voxel_size == pytest.approx((1.1, 1.1, 1.1))
        for key in ("scale", "confidence", "modified_0"):
            assert np.array_equal(mrcfile.read(result.outputs[key]), mrcfile.read(mrc_result.outputs[key])), (name, key)
        with mrcfile.open(result.outputs["scale"]) as m:
            assert float(m.voxel_size.x) == pytest.approx(1.1)


def test_output_name_picks_the_format_and_existing_zarr_needs_overwrite(tmp_path, data_dir, cli):
    args = ("-i", data_dir / "emd_1832.map", "--amplify", "-o", "amp.zarr", "-q")
    assert cli(*args, cwd=tmp_path).returncode == 0
    assert (tmp_path / "amp.zarr" / "zarr.json").exists() and (tmp_path / "scale_occ_emd_1832.zarr").is_dir()
    assert not (tmp_path / "chimX_emd_1832.cxc").exists()  # ChimeraX opens MRC outputs only
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 1 and "output exists (use --overwrite" in again.stderr
    assert cli(*args, "--overwrite", cwd=tmp_path).returncode == 0
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_bad_zarr_inputs_are_one_clear_error(tmp_path, cli):
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    flat = zarr.create_array(str(tmp_path / "nosize.zarr"), shape=(8, 8, 8), dtype="float32")
    flat[:] = 1
    two_d = zarr.create_array(str(tmp_path / "image.zarr"), shape=(8, 8), dtype="float32")
    two_d.attrs["occupy_dask"] = {"voxel_size_angstrom": [1, 1, 1]}
    for name, message in (
        ("group.zarr", "without OME-NGFF multiscales"),
        ("nosize.zarr", "no voxel size in the zarr attributes"),
        ("image.zarr", "a 2D zarr array, a 3D volume is needed"),
    ):
        proc = cli("-i", tmp_path / name, "-d", "out", cwd=tmp_path)
        assert proc.returncode == 1, (name, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_statistics_from_the_background_writer_equal_those_of_the_tasks(tmp_path, phantom):
    """MRC slabs are written by the run's writer thread, zarr chunks by the tasks: the headers
    and the statistics agree to the bit."""
    mrc = run_map(phantom, RunOptions(output_dir=tmp_path / "m"), amplify=True)
    zr = run_map(phantom, RunOptions(output_dir=tmp_path / "z", output_format="zarr"), amplify=True)
    for key in ("scale", "confidence", "modified_0"):
        stats = zarr.open_array(str(zr.outputs[key]), mode="r").attrs["occupy_dask"]["statistics"]
        with mrcfile.open(mrc.outputs[key]) as m:
            data = m.data.astype(np.float64)
            assert (float(m.header.dmin), float(m.header.dmax)) == (data.min(), data.max())
            assert np.float32(stats["mean"]) == m.header.dmean and np.float32(stats["rms"]) == m.header.rms, key
            assert float(m.header.dmean) == pytest.approx(data.mean(), rel=1e-6)
