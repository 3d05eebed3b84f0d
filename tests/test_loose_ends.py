"""What a run leaves and refuses at its edges: no folders from refused runs, one rule for -o,
unknown suffixes, arrays without voxel size, solvent definitions that define nothing, two runs
writing the same files, and too little free space."""

import subprocess
import sys

import mrcfile
import numpy as np
import pytest

import occupy_dask
from occupy_dask.api import run_map
from occupy_dask.errors import OutputError, ProcessingError
from occupy_dask.outputs import output_locks
from occupy_dask.settings import RunOptions


def test_a_refused_map_leaves_nothing(tmp_path, data_dir, cli):
    result = cli("-i", data_dir / "emd_3488.mrc", "-d", tmp_path / "out" / "nested", cwd=tmp_path)
    assert result.returncode == 1 and "solvent-flattened" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_relative_output_names_stay_inside_the_output_dir(tmp_path, data_dir, cli):
    result = cli("-i", data_dir / "emd_1832.map", "--amplify", "-o", "../escaped.mrc", "-d", "sub", cwd=tmp_path)
    assert result.returncode == 2 and "leaves --output-dir sub" in result.stderr and "absolute" in result.stderr
    assert list(tmp_path.iterdir()) == []
    result = cli("-i", data_dir / "emd_1832.map", "--amplify", "-o", "maps/amplified.mrc", "-d", "sub", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sub" / "maps" / "amplified.mrc").is_file()
    result = cli("-i", data_dir / "emd_1832.map", "--amplify", "-o", tmp_path / "elsewhere.mrc", "-d", "sub", "-q", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "elsewhere.mrc").is_file()  # an absolute -o is the user's choice


def test_an_unknown_map_suffix_is_a_usage_error(tmp_path, data_dir, cli):
    result = cli("-i", data_dir / "emd_1832.map", "--amplify", "-o", "out.tif", cwd=tmp_path)
    assert result.returncode == 2 and ".tif is not a map format" in result.stderr and ".ome.zarr" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_array_needs_its_voxel_size(phantom96):
    with pytest.raises(TypeError, match="voxel_size"):
        occupy_dask.estimate(phantom96)


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_a_solvent_definition_that_is_one_value_is_refused(phantom96, value):
    with pytest.raises(ProcessingError, match="tells solvent from content nowhere"):
        occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=np.full(phantom96.shape, value, np.float32))


def test_a_second_run_writing_the_same_names_is_refused_at_once(tmp_path, data_dir, cli):
    out = tmp_path / "out"
    out.mkdir()
    busy = {"scale": out / "scale_res_emd_1832.mrc"}
    with output_locks(busy):  # another run (this process) is writing the scale map
        result = cli("-i", data_dir / "emd_1832.map", "-d", out, cwd=tmp_path, timeout=60)
        assert result.returncode == 1 and "another occupy-dask run is writing this output now" in result.stderr
        other = cli("-i", data_dir / "emd_1832.map", "-d", out, "--occupancy", "-q", cwd=tmp_path)  # other names: runs
        assert other.returncode == 0, other.stderr
    assert not (out / "scale_res_emd_1832.mrc").exists() and (out / "scale_occ_emd_1832.mrc").is_file()


def test_the_lock_is_released_when_a_run_dies(tmp_path):
    code = "import sys, os; from pathlib import Path; from occupy_dask.outputs import output_locks\n"
    code += "with output_locks({'m': Path(sys.argv[1])}): os._exit(0)"
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.mrc")], timeout=60).returncode == 0
    with output_locks({"m": tmp_path / "m.mrc"}):
        pass


def test_too_little_free_space_is_one_clear_error_before_anything_is_written(tmp_path, golden_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))  # 1 MB free
    with pytest.raises(OutputError, match=r"not enough free space: this run writes up to 0\.\d+ GB there .* 0\.00 GB are free"):
        run_map(golden_dir / "phantom96.mrc", RunOptions(output_dir=tmp_path / "out"), amplify=True)
    assert list(tmp_path.iterdir()) == []


def test_free_space_counts_the_spilled_lowpass_in_the_temp_dir(tmp_path, golden_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    maps = 2 * (4 * 96**3 + 1024)  # scale and confidence
    spilled = 4 * 96**3  # the low-passed map, on the same filesystem here
    temp = tmp_path / "temp"
    temp.mkdir()
    options = RunOptions(output_dir=tmp_path / "out", temp_dir=str(temp), spill_lowpass=True)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, maps + spilled - 1))
    with pytest.raises(OutputError, match="not enough free space"):  # the outputs alone would fit
        run_map(golden_dir / "phantom96.mrc", options)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, maps + spilled))
    run_map(golden_dir / "phantom96.mrc", options)
    with mrcfile.open(tmp_path / "out" / "scale_res_phantom96.mrc") as m:
        assert m.data.shape == (96, 96, 96)
