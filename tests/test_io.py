import gzip
import shutil

import mrcfile
import numpy as np
import pytest

from occupy_dask.io.read import ArraySource, MapError, map_name, open_map, read_with_halo


def test_lazy_source_reads_stored_order_and_header(data_dir):
    with open_map(data_dir / "emd_3001.map") as m:
        assert m.info.shape == (25, 43, 73)
        assert m.info.axis_order == (3, 1, 2)
        assert m.info.start == (0, -21, -12)
        # stored axes are (sections=Y, rows=X, columns=Z) for mapc,mapr,maps = 3,1,2
        assert m.info.voxel_size == pytest.approx((4.71 / 12, 17.93 / 40, 33.03 / 72))
        with mrcfile.open(data_dir / "emd_3001.map", permissive=True) as ref:
            assert np.array_equal(m.source[3:9, :, 5:20], ref.data[3:9, :, 5:20])
        import pickle

        assert len(pickle.dumps(m.source)) < 1000  # a small picklable source, never the array


def test_gz_input_is_decompressed_to_a_temporary_file_removed_on_close(data_dir, tmp_path):
    gz = tmp_path / "emd_1832.map.gz"
    with open(data_dir / "emd_1832.map", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    m = open_map(gz, temp_dir=str(tmp_path))
    assert m.info.name == "emd_1832"
    temp = m._temp_path
    assert temp.exists()
    assert np.array_equal(m.source[:, :, :], mrcfile.read(data_dir / "emd_1832.map"))
    m.close()
    assert not temp.exists()


def test_read_with_halo_mirrors_like_scipy_reflect():
    a = np.arange(7 * 8 * 9, dtype=np.float32).reshape(7, 8, 9)
    src = ArraySource(a)
    padded = np.pad(a, 3, mode="symmetric")
    assert np.array_equal(read_with_halo(src, (0, 0, 0), (7, 8, 9), (3, 3, 3)), padded)
    assert np.array_equal(read_with_halo(src, (2, 4, 0), (5, 8, 4), (3, 3, 3)), padded[2:11, 4:14, 0:10])


def test_map_name_strips_map_suffixes(tmp_path):
    assert map_name(tmp_path / "emd_1.map.gz") == "emd_1"
    assert map_name(tmp_path / "run_class001.mrc") == "run_class001"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, this is text\n" * 100, "not an MRC map"),
        (np.random.default_rng(0).bytes(4096), "not"),
        (b"short", "shorter than an MRC header"),
    ],
)
def test_not_an_mrc_file(tmp_path, content, message):
    path = tmp_path / "bad.mrc"
    path.write_bytes(content)
    with pytest.raises(MapError, match=message):
        open_map(path)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_an_image_is_not_a_map(tmp_path, suffix):
    from PIL import Image  # comes with matplotlib

    image = tmp_path / f"micrograph{suffix}"
    Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)).save(image)
    before = image.read_bytes()
    with pytest.raises(MapError, match=r"micrograph.*not (a readable )?(an )?MRC map"):
        open_map(image)
    assert image.read_bytes() == before


def test_truncated_and_2d_and_mode(tmp_path, data_dir):
    raw = (data_dir / "emd_1832.map").read_bytes()
    (tmp_path / "trunc.mrc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MapError, match="truncated"):
        open_map(tmp_path / "trunc.mrc")
    with mrcfile.new(tmp_path / "flat.mrc") as m:
        m.set_data(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(MapError, match="2D image"):
        open_map(tmp_path / "flat.mrc")
    with mrcfile.new(tmp_path / "c.mrc") as m:
        m.set_data(np.zeros((4, 4, 4), np.complex64))
    with pytest.raises(MapError, match="unsupported MRC data mode 4"):
        open_map(tmp_path / "c.mrc")
    with pytest.raises(MapError, match="no such"):
        open_map(tmp_path / "missing.mrc")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16, np.float32])
def test_data_modes_read_as_float32(tmp_path, dtype):
    data = (np.arange(6 * 7 * 8) % 100).reshape(6, 7, 8).astype(dtype)
    with mrcfile.new(tmp_path / "m.mrc") as m:
        m.set_data(data)
        m.voxel_size = 1.5
    with open_map(tmp_path / "m.mrc") as mi:
        block = mi.source[:, :, :]
        assert block.dtype == np.float32 and np.array_equal(block, data.astype(np.float32))
        assert mi.info.voxel_size == pytest.approx((1.5, 1.5, 1.5))


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float16])
def test_block_reads_equal_the_whole_map(tmp_path, dtype):
    data = (np.random.default_rng(5).normal(size=(13, 17, 19)) * 100).astype(dtype)
    mrcfile.write(tmp_path / "m.mrc", data, voxel_size=1.0)
    with open_map(tmp_path / "m.mrc") as m:
        for key in [(slice(0, 13), slice(0, 17), slice(0, 19)), (slice(2, 9), slice(3, 17), slice(5, 11)), (slice(4, 5), slice(0, 17), slice(0, 19))]:
            assert np.array_equal(m.source[key], data[key].astype(np.float32))
        assert m.source[key].dtype == np.float32


def test_blockwise_writer_whole_planes_and_sub_blocks(tmp_path):
    from occupy_dask.io.read import MapInfo
    from occupy_dask.io.write import create_mrc

    data = np.random.default_rng(6).normal(size=(10, 12, 14)).astype(np.float32)
    info = MapInfo(path=None, name="m", shape=data.shape, voxel_size=(1.0, 1.0, 1.0))
    target = create_mrc(tmp_path / "out.mrc", info, "test")
    target[0:4, 0:12, 0:14] = data[0:4]  # whole planes: one positioned write
    target[4:10, 0:5, 0:14] = data[4:10, 0:5]  # whole rows
    target[4:10, 5:12, 0:7] = data[4:10, 5:12, 0:7]  # general sub-block
    target[4:10, 5:12, 7:14] = data[4:10, 5:12, 7:14]
    assert np.array_equal(mrcfile.read(tmp_path / "out.mrc"), data)


def _direct_io_supported(folder) -> bool:
    import os

    probe = folder / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | getattr(os, "O_DIRECT", 0)))
        return hasattr(os, "O_DIRECT")
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.mark.parametrize("shape", [(9, 16, 32), (9, 12, 14)])  # planes of 512 voxels (direct writes) and of 168 (buffered)
def test_slabs_from_pool_buffers_are_written_direct_where_aligned(tmp_path, shape):
    from occupy_dask.buffers import ALIGNMENT, aligned_empty
    from occupy_dask.io import write
    from occupy_dask.io.read import MapInfo

    data = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    info = MapInfo(path=None, name="m", shape=shape, voxel_size=(1.0, 1.0, 1.0))
    target = write.create_mrc(tmp_path / "out.mrc", info, "test")
    aligned_planes = shape[1] * shape[2] % 128 == 0
    for z0, z1 in [(0, 4), (4, 8), (8, 9)]:  # the last slab is thinner
        block = aligned_empty((z1 - z0, *shape[1:]))
        assert block.ctypes.data % ALIGNMENT == 0 and block.flags.c_contiguous
        block[...] = data[z0:z1]
        start = write.HEADER_BYTES + 4 * z0 * shape[1] * shape[2]
        if aligned_planes and _direct_io_supported(tmp_path):
            assert write._write_direct(target.path, block, start)  # through O_DIRECT
        target[z0:z1, :, :] = block
    unaligned = np.empty(4 * 512 + 1, np.float32)[1:].reshape(4, 16, 32)  # off the 512-byte grid
    assert not write._write_direct(target.path, unaligned, write.HEADER_BYTES)
    assert np.array_equal(mrcfile.read(tmp_path / "out.mrc"), data)


def test_halo_read_into_a_buffer_equals_np_pad():
    import itertools

    from occupy_dask.io.read import ArraySource, read_with_halo

    rng = np.random.default_rng(0)
    for shape in [(10, 12, 9), (5, 6, 7), (3, 20, 4)]:
        data = rng.normal(size=shape).astype(np.float32)
        source = ArraySource(data)
        for halo in [(1, 1, 1), (2, 3, 1), (4, 4, 4)]:  # (4, 4, 4) mirrors more than a 3-plane map has
            for start in itertools.product(*[range(0, n, 3) for n in shape]):
                stop = tuple(min(s + 3, n) for s, n in zip(start, shape))
                expected = read_with_halo(source, start, stop, halo)
                buffer = np.full([b - a + 2 * h for a, b, h in zip(start, stop, halo)], np.nan, np.float32)
                assert np.array_equal(read_with_halo(source, start, stop, halo, out=buffer), expected)


def test_mrc_block_reads_into_buffers(data_dir):
    with open_map(data_dir / "emd_3001.map") as m, mrcfile.open(data_dir / "emd_3001.map", permissive=True) as ref:
        for key in [(slice(2, 9), slice(0, 43), slice(0, 73)), (slice(0, 25), slice(5, 30), slice(7, 60))]:
            out = np.empty([k.stop - k.start for k in key], np.float32)
            assert m.source.read_into(key, out) is out
            assert np.array_equal(out, ref.data[key])


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


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_reuses_large_arrays_instead_of_unmapping_them():
    import subprocess
    import sys

    script = """
import sys, numpy as np, psutil
from occupy_dask.buffers import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); sys.exit()
rss = lambda: psutil.Process().memory_info().rss
a = np.ones(32 << 20, np.float32)  # 128 MB, above every mmap threshold by default
before = rss()
del a
print(before - rss() > 64e6)  # freed back to the system
"""

    def freed(mode):
        return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout.strip()

    result = {mode: freed(mode) for mode in ("keep", "default")}
    if result["keep"] == "unsupported":
        pytest.skip("not glibc")
    assert result == {"keep": "False", "default": "True"}  # kept in the process only when asked
