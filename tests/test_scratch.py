"""scratch.py: spilled copies read back exactly what was computed, and leave nothing behind on error."""

import dask
import dask.array as da
import numpy as np
import pytest

from occupy_dask.scratch import array_source, materialise


def _run(*objs, label=""):
    return dask.compute(*objs)


def test_an_irregularly_chunked_dask_array_is_spilled_exactly(tmp_path):
    data = np.random.default_rng(2).normal(size=(30, 20, 25)).astype(np.float32)
    lazy = da.from_array(data, chunks=((7, 13, 10), (20,), (5, 20)))  # blocks that a store chunk cannot follow
    source, folder = array_source(lazy, str(tmp_path), _run, distributed=True)
    assert folder is not None and folder.parent == tmp_path
    out = np.empty_like(data)
    assert np.array_equal(source.read_into((slice(0, 30), slice(0, 20), slice(0, 25)), out), data)
    assert np.array_equal(source[3:17, 2:9, 4:21], data[3:17, 2:9, 4:21])


def test_materialised_maps_are_equal_in_memory_and_on_disk(tmp_path):
    data = np.random.default_rng(3).normal(size=(24, 16, 16)).astype(np.float32)
    lazy = da.from_array(data, chunks=(8, 16, 16))
    memory, none, _ = materialise(lazy, False, None, _run, "test")
    disk, folder, _ = materialise(lazy, True, str(tmp_path), _run, "test", read_chunks=(8, 8, 8))
    assert none is None and folder.exists()
    key = (slice(5, 20), slice(3, 11), slice(0, 16))
    assert np.array_equal(memory[key], data[key]) and np.array_equal(disk.read_into(key, np.empty((15, 8, 16), np.float32)), data[key])


def test_an_error_while_spilling_removes_the_store(tmp_path):
    lazy = da.from_array(np.ones((16, 8, 8), np.float32), chunks=(8, 8, 8))

    def failing(*objs, label=""):
        assert any(tmp_path.iterdir())  # the store exists while it is written
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        materialise(lazy, True, str(tmp_path), failing, "test")
    assert not any(tmp_path.iterdir())
