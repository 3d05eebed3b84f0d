"""io/zarr_chunks.py: raw chunk reads and writes of plain stores agree with zarr's own."""

import os

import numpy as np
import pytest


@pytest.mark.parametrize("chunks, compressed", [((4, 6, 5), False), ((3, 4, 2), False), ((4, 6, 5), True)])
def test_zarr_block_reads_into_buffers(tmp_path, chunks, compressed):
    import itertools

    import zarr

    from occupy_dask.io.read import ZarrSource

    data = np.random.default_rng(1).normal(size=(10, 6, 5)).astype(np.float32)
    codec = {} if compressed else {"compressors": None}
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=chunks, dtype="float32", fill_value=0.0, **codec)
    z[:] = data
    for scratch in (False, True):  # a scratch store's reads also drop it from the page cache
        source = ZarrSource(str(tmp_path / "a.zarr"), data.shape, scratch=scratch)
        for a, b in itertools.product([(0, 10), (3, 7), (4, 8), (9, 10)], [(0, 6), (1, 5)]):
            key = (slice(*a), slice(*b), slice(1, 5))
            out = np.empty([k.stop - k.start for k in key], np.float32)
            assert np.array_equal(source.read_into(key, out), data[key])
            whole = (slice(*a), slice(0, 6), slice(0, 5))
            out = np.empty([k.stop - k.start for k in whole], np.float32)
            assert np.array_equal(source.read_into(whole, out), data[whole])


@pytest.mark.parametrize("chunks", [(4, 6, 5), (3, 6, 5), (4, 3, 2)])
def test_plain_target_writes_what_zarr_reads(tmp_path, chunks):
    import zarr

    from occupy_dask.io.read import ZarrSource
    from occupy_dask.io.zarr_chunks import PlainTarget

    data = np.random.default_rng(2).normal(size=(10, 6, 5)).astype(np.float32)
    zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=chunks, dtype="float32", fill_value=0.0, compressors=None)
    target = PlainTarget(str(tmp_path / "s.zarr"), data.shape, chunks).prepare()
    for z in range(0, 10, 4):  # blocks of 4 planes: whole chunks for (4, 6, 5), zarr's own writes otherwise
        target[z : z + 4, 0:6, 0:5] = data[z : z + 4]
    assert np.array_equal(zarr.open_array(str(tmp_path / "s.zarr"), mode="r")[:], data)
    out = np.empty_like(data)
    assert np.array_equal(ZarrSource(str(tmp_path / "s.zarr"), data.shape).read_into((slice(0, 10), slice(0, 6), slice(0, 5)), out), data)


def test_zarr_chunks_never_written_read_as_the_fill_value(tmp_path):
    import zarr

    from occupy_dask.io.read import ZarrSource

    z = zarr.create_array(str(tmp_path / "f.zarr"), shape=(8, 4, 4), chunks=(4, 4, 4), dtype="float32", fill_value=2.5, compressors=None)
    z[:4] = 1.0  # the second chunk is never written
    out = np.empty((8, 4, 4), np.float32)
    ZarrSource(str(tmp_path / "f.zarr"), (8, 4, 4)).read_into((slice(0, 8), slice(0, 4), slice(0, 4)), out)
    assert np.array_equal(out, z[:]) and out[4:].min() == 2.5


def test_spectra_round_trip_through_plain_complex_stores(tmp_path):
    import dask.array as da

    from occupy_dask.io.zarr_chunks import create_plain_array, plain_layout

    rng = np.random.default_rng(9)
    data = (rng.normal(size=(9, 6, 5)) + 1j * rng.normal(size=(9, 6, 5))).astype(np.complex64)
    target = create_plain_array(str(tmp_path / "c.zarr"), data.shape, (4, 6, 5), np.complex64)
    for z in range(0, 9, 4):  # whole chunks, the last one short
        target[z : z + 4, 0:6, 0:5] = data[z : z + 4]
    assert plain_layout(str(tmp_path / "c.zarr")).dtype == np.dtype("<c8")
    assert np.array_equal(da.from_zarr(str(tmp_path / "c.zarr")).compute(), data)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_plain_arrays_are_made_without_zarr_with_zarrs_own_metadata(tmp_path, monkeypatch, dtype):
    """The scratch stores' zarr.json is written without importing zarr, byte for byte what
    zarr.create_array writes; zarr reads the array back; an existing array is not replaced."""
    import sys

    import zarr

    from occupy_dask.io.zarr_chunks import create_plain_array

    zarr.create_array(str(tmp_path / "zarr.zarr"), shape=(9, 7, 5), chunks=(4, 7, 2), dtype=np.dtype(dtype), fill_value=0, compressors=None)
    monkeypatch.setitem(sys.modules, "zarr", None)  # any import of zarr fails
    target = create_plain_array(str(tmp_path / "ours.zarr"), (9, 7, 5), (4, 7, 2), dtype)
    data = (np.random.default_rng(2).normal(size=(9, 7, 5)) * (1 + 1j if dtype == np.complex64 else 1)).astype(dtype)
    target[0:8, 0:7, 0:4] = data[0:8, :, 0:4]  # the chunks past x = 4 and z = 8 are never written: zarr's fill value
    with pytest.raises(FileExistsError):
        create_plain_array(str(tmp_path / "ours.zarr"), (9, 7, 5), (4, 7, 2), dtype)
    monkeypatch.undo()
    assert (tmp_path / "ours.zarr" / "zarr.json").read_bytes() == (tmp_path / "zarr.zarr" / "zarr.json").read_bytes()
    expected = np.zeros_like(data)
    expected[0:8, :, 0:4] = data[0:8, :, 0:4]
    assert np.array_equal(zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[:], expected)


@pytest.mark.parametrize("gather_bytes", [1 << 20, 1])
def test_plain_target_writes_blocks_of_many_whole_chunks_itself(tmp_path, monkeypatch, gather_bytes):
    """A block whose edges lie on chunk boundaries (or the array's end) is written chunk file
    by chunk file, edge chunks padded as zarr pads them, in batches of open files, the strips
    of a row of chunks copied out together or (``GATHER_BYTES`` below a chunk) one at a time;
    zarr reads back the same array."""
    import zarr

    from occupy_dask.io import zarr_chunks
    from occupy_dask.io.zarr_chunks import create_plain_array

    data = (np.random.default_rng(4).normal(size=(9, 7, 5)) + 1j).astype(np.complex64)
    target = create_plain_array(str(tmp_path / "m.zarr"), data.shape, (2, 3, 2), np.complex64)
    monkeypatch.setattr(zarr, "open_array", lambda *a, **k: pytest.fail("an aligned block went through zarr"))
    monkeypatch.setattr(zarr_chunks, "WRITE_BATCH", 4)  # more chunks than one batch
    monkeypatch.setattr(zarr_chunks, "GATHER_BYTES", gather_bytes)
    target[0:4, 0:7, 0:5] = data[0:4]  # 2 x 3 x 3 chunks, short ones at the y and x ends
    target[4:9, 0:7, 0:5] = data[4:9]
    monkeypatch.undo()
    assert np.array_equal(zarr.open_array(str(tmp_path / "m.zarr"), mode="r")[:], data)


def test_a_slab_read_keeps_in_the_page_cache_only_the_planes_the_next_slab_reads(tmp_path, monkeypatch):
    """A spilled store is dropped from the page cache as it is read, except, in a pass over
    slabs, the planes from ``keep_from`` on: the next slab reads them again (its halo and its
    tiles' reach), from memory instead of the disk."""
    from occupy_dask.io import zarr_chunks
    from occupy_dask.io.read import ZarrSource, read_with_halo
    from occupy_dask.io.zarr_chunks import create_plain_array

    data = np.random.default_rng(6).normal(size=(32, 5, 6)).astype(np.float32)
    target = create_plain_array(str(tmp_path / "s.zarr"), data.shape, (8, 5, 6), np.float32)
    for z in range(0, 32, 8):
        target[z : z + 8, 0:5, 0:6] = data[z : z + 8]
    dropped = []
    monkeypatch.setattr(zarr_chunks, "drop_cached", lambda fd, start=0, length=0: dropped.append((os.readlink(f"/proc/self/fd/{fd}"), start, length)))
    source = ZarrSource(str(tmp_path / "s.zarr"), data.shape, scratch=True)
    block = read_with_halo(source, (8, 0, 0), (16, 5, 6), (3, 0, 0), out=np.empty((14, 5, 6), np.float32))
    assert np.array_equal(block, data[5:19])
    plane = 5 * 6 * 4
    chunk_of = [os.path.basename(os.path.dirname(os.path.dirname(p))) for p, _, _ in dropped]  # c/<i>/0/0
    assert chunk_of == ["0", "1"] and [(s, n) for _, s, n in dropped] == [(5 * plane, 3 * plane), (0, 5 * plane)]
    dropped.clear()
    read_with_halo(source, (8, 0, 0), (16, 2, 6), (3, 0, 0), out=np.empty((14, 2, 6), np.float32))  # not a slab: all dropped
    assert [(s, n) for _, s, n in dropped] == [(0, 0)] * 3


def test_following_block_is_the_next_in_block_order():
    """The block a pass reads next: one step on along the last axis the block does not span
    (pencils along x, bars along y, slabs along z), cut at the array's end; none after the last."""
    from occupy_dask.io.zarr_chunks import following_block

    shape = (20, 12, 9)
    assert following_block((slice(0, 20), slice(0, 12), slice(0, 4)), shape) == (slice(0, 20), slice(0, 12), slice(4, 8))
    assert following_block((slice(0, 20), slice(0, 12), slice(4, 8)), shape) == (slice(0, 20), slice(0, 12), slice(8, 9))
    assert following_block((slice(0, 20), slice(0, 12), slice(8, 9)), shape) is None
    assert following_block((slice(5, 10), slice(3, 6), slice(None)), shape) == (slice(5, 10), slice(6, 9), slice(0, 9))
    assert following_block((slice(5, 10), slice(None), slice(None)), shape) == (slice(10, 15), slice(0, 12), slice(0, 9))
    assert following_block((slice(14, 20), slice(None), slice(None)), shape) is None
    assert following_block((slice(None),) * 3, shape) is None


def test_spilled_reads_start_the_disk_on_the_next_block(tmp_path, monkeypatch):
    """A spilled store read by a pass announces its block's chunk files and then the next
    block's (POSIX_FADV_WILLNEED) before reading: the disk reads ahead while the block is used.
    The low-passed map read from its spectrum announces its whole slab and the next one before
    reading the slab a few planes at a time; the data read are unchanged."""
    from occupy_dask import scratch
    from occupy_dask.io import zarr_chunks
    from occupy_dask.io.zarr_chunks import create_plain_array

    data = (np.random.default_rng(5).normal(size=(12, 4, 6)) + 1j).astype(np.complex64)
    target = create_plain_array(str(tmp_path / "s.zarr"), data.shape, (3, 4, 2), np.complex64)
    target[0:12, 0:4, 0:6] = data
    announced = []

    def will_need(fd, start, length):
        index = tuple(int(part) for part in os.readlink(f"/proc/self/fd/{fd}").split(os.sep)[-3:])
        announced.append((index, start, length))

    monkeypatch.setattr(zarr_chunks, "will_need", will_need)
    store = scratch.PlainStore(str(tmp_path / "s.zarr"), data.shape, data.dtype.str)
    assert np.array_equal(store[:, :, 2:4], data[:, :, 2:4])  # a pencil: its chunk files, then the next pencil's
    plane = 4 * 2 * 8
    assert announced == [((i, 0, k), 0, 3 * plane) for k in (1, 2) for i in range(4)]
    announced.clear()
    assert np.array_equal(store[:, :, 4:6], data[:, :, 4:6])  # the last pencil: nothing after it
    assert announced == [((i, 0, 2), 0, 3 * plane) for i in range(4)]

    announced.clear()
    monkeypatch.setattr(scratch, "GROUP_BYTES", 1)  # a plane read at a time
    source = scratch.LowpassOnRead(str(tmp_path / "s.zarr"), (12, 4, 10), 6)
    block = source[4:6, :, :]
    assert len(block) == 2
    slab = [((1, 0, k), 1 * plane, 2 * plane) for k in range(3)] + [((2, 0, k), 0, 2 * plane) for k in range(3)]
    assert announced == slab  # planes 4-5, then the next slab's 6-7, before the first plane is read, each once


def test_copy_rows_copies_what_numpy_assignment_copies():
    """Rows copied as whole items: slices of both sides, other dtypes and layouts (numpy's own
    assignment then) give exactly ``dst[...] = src``, and nothing beside ``dst`` is touched."""
    from occupy_dask.io.zarr_chunks import copy_rows

    rng = np.random.default_rng(3)
    src = (rng.standard_normal((4, 5, 13)) + 1j * rng.standard_normal((4, 5, 13))).astype(np.complex64)
    wide = np.zeros((4, 5, 20), np.complex64)
    copy_rows(wide[:, 1:4, 3:9], src[:, :3, 2:8])
    expected = np.zeros_like(wide)
    expected[:, 1:4, 3:9] = src[:, :3, 2:8]
    assert np.array_equal(wide, expected)
    for dst in (np.zeros((4, 5, 6), np.complex128), np.zeros((6, 5, 4), np.complex64).transpose(2, 1, 0)):
        copy_rows(dst, src[:, :, :6])
        assert np.array_equal(dst, src[:, :, :6])
