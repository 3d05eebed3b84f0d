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


def test_a_1024_box_spills_both_spectra_and_stores_its_lowpassed_map_only_for_cubes_while_512_keeps_them():
    """Above 512 MiB the low-passed map and the low-pass's spectra go to disk, so a run's memory
    follows its chunks: a 1024^3 map (4 GiB; spectra of 1.1 GB at an 8 Å low-pass of 1 Å voxels)
    plans both spectra, and reads its slabs of the low-passed map from the filtered one; in
    cubes it stores the low-passed map too. A 512^3 map plans no store."""
    from occupy_dask.lowpass import spectrum_bytes
    from occupy_dask.scratch import scratch_bytes
    from occupy_dask.settings import RunOptions, derive_settings

    big = derive_settings((1024,) * 3, 1.0, occupancy=True)
    assert big.chunks[1:] == big.shape[1:]
    spectrum = spectrum_bytes(big.shape, big.voxel_size, big.lowpass_angstrom)
    assert spectrum > 1e9
    assert scratch_bytes(big, RunOptions(), _run) == 2 * spectrum
    cubes = derive_settings((1024,) * 3, 1.0, occupancy=True, chunks=256)
    assert scratch_bytes(cubes, RunOptions(), _run) == 4 * 1024**3 + 2 * spectrum
    assert scratch_bytes(derive_settings((512,) * 3, 1.0, occupancy=True), RunOptions(), _run) == 0


def test_pooled_buffers_are_freed_before_each_pass(monkeypatch, tmp_path):
    """The block buffers one pass pooled (blocks read from a file) are freed before the next
    pass starts: blocks of other shapes must not be held twice."""
    import mrcfile

    import occupy_dask
    from occupy_dask import estimation, reductions
    from occupy_dask.buffers import POOL

    pooled = {}

    def recording(name, function):
        def wrapper(*args, **kwargs):
            pooled.setdefault(name, POOL.nbytes)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(estimation, "global_reductions", recording("reductions", estimation.global_reductions))
    monkeypatch.setattr(estimation, "fused_graph", recording("fused", estimation.fused_graph))
    monkeypatch.setattr(reductions, "first_pass_block", recording("first pass", reductions.first_pass_block))
    data = np.random.default_rng(1).normal(size=(48, 40, 44)).astype(np.float32)
    data[10:30, 10:30, 10:30] += 3.0
    mrcfile.write(tmp_path / "m.mrc", data, voxel_size=1.0)
    with occupy_dask.estimate(tmp_path / "m.mrc", chunks=16):
        pass
    assert pooled["first pass"] == 0 and pooled["reductions"] == 0 and pooled["fused"] == 0


class _Target:
    """A store target that records which thread wrote each block, and fails on one of them."""

    def __init__(self, shape, fail_at=None):
        import threading

        self.data, self.fail_at, self.threads, self._lock = np.zeros(shape, np.float32), fail_at, [], threading.Lock()

    def __setitem__(self, key, value):
        import threading

        if key[0].start == self.fail_at:
            raise OSError("No space left on device")
        with self._lock:
            self.threads.append(threading.current_thread().name)
        self.data[key] = value


def test_blocks_stored_on_disk_are_written_behind_and_a_failed_write_stops_the_stage():
    from occupy_dask.scratch import store_blocks

    data = np.random.default_rng(5).normal(size=(40, 6, 7)).astype(np.float32)
    lazy = da.from_array(data, chunks=(8, 6, 7))
    target = _Target(data.shape)
    measured = store_blocks(lazy, target, _run, "test", measure=lambda block, shape, start: (start, float(block.sum())))
    assert np.array_equal(target.data, data)  # every write done when the stage returns
    assert [m[0][0] for m in measured] == [0, 8, 16, 24, 32] and measured[1][1] == pytest.approx(float(data[8:16].sum(dtype=np.float64)), rel=1e-5)
    assert set(target.threads) == {"occupy-write_0"}
    with pytest.raises(OSError, match="No space left"):
        store_blocks(lazy, _Target(data.shape, fail_at=16), _run, "test")
    memory = np.zeros_like(data)
    store_blocks(lazy, memory, _run, "test")  # an array in memory: filled by the tasks themselves
    assert np.array_equal(memory, data)


@pytest.mark.parametrize("halo", [1, 3])
def test_slab_reads_of_the_lowpassed_map_hand_their_shared_planes_to_the_next_slab(tmp_path, monkeypatch, halo):
    """A pass over slabs reads each slab with the planes the next one reads too (a halo, the
    tiles' reach); the next read takes those planes as transformed instead of transforming them
    again: every plane is transformed once (twice only where the next slab's read came first),
    and every block holds the whole-array low-pass's bits. A read that starts elsewhere, or of
    other rows, transforms its own planes."""
    from occupy_dask import lowpass as lowpass_stage
    from occupy_dask import scratch
    from occupy_dask.io.read import read_with_halo
    from occupy_dask.lowpass import lowpass, lowpass_numpy

    shape, voxel = (36, 20, 24), (1.0, 1.0, 1.0)
    data = np.random.default_rng(9).normal(size=shape).astype(np.float32)
    spiller = scratch.Spiller(tmp_path, lambda *objs, label="": dask.compute(*objs))
    lowpass(da.from_array(data, chunks=lowpass_stage.input_chunks(shape, 20_000)), voxel, 3.0, slab_planes=6, spill=spiller, block_bytes=20_000)
    filtered = spiller.stores["filtered"]
    source = scratch.LowpassOnRead(filtered.path, shape, filtered.shape[2])
    expected = np.pad(lowpass_numpy(data, voxel, 3.0), [(halo, halo), (0, 0), (0, 0)], mode="symmetric")
    transformed = []
    inverse_x = scratch.inverse_x
    monkeypatch.setattr(scratch, "inverse_x", lambda lines, *a, **k: transformed.append(len(lines)) or inverse_x(lines, *a, **k))
    for z in range(0, 36, 6):
        block = read_with_halo(source, (z, 0, 0), (z + 6, 20, 24), (halo, 0, 0), out=np.full((6 + 2 * halo, 20, 24), np.nan, np.float32))
        assert np.array_equal(block, expected[z : z + 6 + 2 * halo])
    assert sum(transformed) == 36
    transformed.clear()
    assert np.array_equal(source[4:9, 2:7, :], expected[4 + halo : 9 + halo, 2:7])
    assert sum(transformed) == 5
    scratch.STASH.clear()


@pytest.mark.parametrize("cached", [False, True])
def test_a_cached_filtered_spectrum_stays_in_the_page_cache_and_reads_the_same(tmp_path, monkeypatch, cached):
    """A filtered spectrum that every pass reads is dropped from the page cache as it is read,
    or, ``cached``, left there for the next pass; the blocks are the same either way."""
    from occupy_dask import lowpass as lowpass_stage
    from occupy_dask import scratch
    from occupy_dask.io import zarr_chunks
    from occupy_dask.lowpass import lowpass, lowpass_numpy

    shape, voxel = (24, 16, 20), (1.0, 1.0, 1.0)
    data = np.random.default_rng(10).normal(size=shape).astype(np.float32)
    spiller = scratch.Spiller(tmp_path, lambda *objs, label="": dask.compute(*objs))
    lowpass(da.from_array(data, chunks=lowpass_stage.input_chunks(shape, 20_000)), voxel, 3.0, slab_planes=8, spill=spiller, block_bytes=20_000)
    filtered = spiller.stores["filtered"]
    dropped = []
    monkeypatch.setattr(zarr_chunks, "drop_cached", lambda fd, start=0, length=0: dropped.append(start))
    source = scratch.LowpassOnRead(filtered.path, shape, filtered.shape[2], cached=cached)
    expected = lowpass_numpy(data, voxel, 3.0)
    for z in range(0, 24, 8):
        assert np.array_equal(source[z : z + 8, :, :], expected[z : z + 8])
    assert (len(dropped) == 0) == cached
    scratch.STASH.clear()


def test_the_filtered_spectrum_stays_cached_only_where_memory_leaves_room(monkeypatch):
    """At most a BUDGET_SHARE-th of the memory the process may use (a cgroup's limit counts the
    page cache too) and of the run's memory limit, and only for this process's threads."""
    from types import SimpleNamespace

    from occupy_dask import scratch

    monkeypatch.setattr(scratch, "memory_limit", lambda: 24 << 30)
    assert scratch.keeps_in_page_cache(1 << 30, None)  # 1 GiB of a 24 GiB machine
    assert scratch.keeps_in_page_cache(3 << 30, None) and not scratch.keeps_in_page_cache((3 << 30) + 1, None)
    assert not scratch.keeps_in_page_cache(1 << 30, SimpleNamespace(memory_budget=4 << 30))  # --memory-limit 4GB
    assert scratch.keeps_in_page_cache(1 << 29, SimpleNamespace(memory_budget=4 << 30))
    assert not scratch.keeps_in_page_cache(1 << 20, SimpleNamespace(distributed=True))  # read by other processes
    monkeypatch.setattr(scratch, "memory_limit", lambda: 3 << 29)  # a 1.5 GiB cgroup
    assert not scratch.keeps_in_page_cache(1 << 30, None)


def test_a_tree_is_removed_by_several_threads_and_a_link_out_of_it_is_not_followed(tmp_path, monkeypatch):
    import os
    import threading

    from occupy_dask import scratch

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"x")
    tree = tmp_path / "store"
    for z in range(3):
        (tree / "c" / str(z)).mkdir(parents=True)
        for y in range(5):
            (tree / "c" / str(z) / str(y)).write_bytes(b"\0" * 100)
    (tree / "zarr.json").write_text("{}")
    (tree / "c" / "link").symlink_to(outside, target_is_directory=True)
    unlinked_by = set()
    unlink = os.unlink

    def recorded(name, *args, **kwargs):
        unlinked_by.add(threading.current_thread().name)
        return unlink(name, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", recorded)
    scratch.remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep.bin").read_bytes() == b"x"  # the link went, not what it points to
    assert len(unlinked_by) == scratch.REMOVAL_THREADS
    scratch.remove_tree(tree)  # gone already: nothing to do, no error
