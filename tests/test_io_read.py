"""io/read.py: MRC/CCP4 and gzip inputs, block reads, bad files."""

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


def test_reads_of_spans_apart_announce_every_span_first(tmp_path, monkeypatch):
    """A block of rows from several planes is many spans apart in the file: all of them are
    announced to the kernel (POSIX_FADV_WILLNEED) before the first is read, so a cold disk
    queues them together; a block of whole planes is one span, announced with the next block's
    planes (a pass reads that next), up to the end of the map."""
    import os

    data = np.random.default_rng(6).normal(size=(9, 20, 16)).astype(np.float32)
    mrcfile.write(tmp_path / "m.mrc", data, voxel_size=1.0)
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, start, length, advice: calls.append((start, length, advice)))
    with open_map(tmp_path / "m.mrc") as m:
        offset = m.source.offset
        assert np.array_equal(m.source[2:7, 5:11, 0:16], data[2:7, 5:11])
        assert calls == [(offset + ((z * 20) + 5) * 16 * 4, 6 * 16 * 4, os.POSIX_FADV_WILLNEED) for z in range(2, 7)]
        calls.clear()
        row = 16 * 4
        assert np.array_equal(m.source[0:3, 0:20, 0:16], data[0:3])
        assert calls == [(offset, 6 * 20 * row, os.POSIX_FADV_WILLNEED)]  # planes 0-2 and the next block's 3-5
        calls.clear()
        assert np.array_equal(m.source[2:7, 0:20, 0:16], data[2:7])
        assert calls == [(offset + 2 * 20 * row, 7 * 20 * row, os.POSIX_FADV_WILLNEED)]  # the next block's planes end with the map's


def test_a_block_of_whole_planes_is_one_read_and_rows_are_one_read_per_plane(tmp_path, monkeypatch):
    """Each read takes the interpreter lock once: a block of whole planes, one span of the file,
    is read in one call (a thread holding the lock made a plane-by-plane read wait at every
    plane); a block of rows, spans apart, in one call per plane. Short reads are continued."""
    import os

    data = np.random.default_rng(12).normal(size=(9, 20, 16)).astype(np.float32)
    mrcfile.write(tmp_path / "m.mrc", data, voxel_size=1.0)
    sizes = []
    preadv = os.preadv

    def short_reads(fd, buffers, offset):  # at most 1000 bytes a call, as a system may return
        sizes.append(buffers[0].nbytes)
        return preadv(fd, [buffers[0][:1000]], offset)

    monkeypatch.setattr(os, "preadv", short_reads)
    with open_map(tmp_path / "m.mrc") as m:
        assert np.array_equal(m.source[2:7, 0:20, 0:16], data[2:7])
        assert sizes[0] == 5 * 20 * 16 * 4 and len(sizes) == -(-sizes[0] // 1000)  # one span, continued
        sizes.clear()
        monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: sizes.append(buffers[0].nbytes) or preadv(fd, buffers, offset))
        assert np.array_equal(m.source[2:7, 5:11, 0:16], data[2:7, 5:11])
        assert sizes == [6 * 16 * 4] * 5


def test_the_box_is_read_from_an_mrc_header_in_either_byte_order_and_nothing_else(tmp_path):
    import struct

    import mrcfile

    from occupy_dask.io.peek import mrc_box

    path = tmp_path / "map.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((5, 6, 7), np.float32))
    assert mrc_box(path) == (5, 6, 7)
    big = tmp_path / "big.mrc"
    big.write_bytes(struct.pack(">4i", 7, 6, 5, 2) + bytes(1008) + bytes(4 * 210))
    assert mrc_box(big) == (5, 6, 7)
    (tmp_path / "text.mrc").write_text("not a map at all, but long enough")
    (tmp_path / "short.mrc").write_bytes(b"\x01\x00")
    (tmp_path / "store.zarr").mkdir()
    for name in ("text.mrc", "short.mrc", "store.zarr", "missing.mrc"):
        assert mrc_box(tmp_path / name) is None
