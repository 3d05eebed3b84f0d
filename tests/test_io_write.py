"""io/write.py: blockwise MRC writes, direct I/O where aligned."""

import mrcfile
import numpy as np
import pytest


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


def test_a_finished_output_is_flushed_to_disk_before_it_is_renamed(tmp_path, monkeypatch):
    """Sub-blocks go through a shared mapping without a flush each (the kernel writes them
    back); finishing an output flushes its file once, before ``commit`` renames it into place."""
    import os

    from occupy_dask.io.read import MapInfo
    from occupy_dask.io.write import MrcOutput

    data = np.random.default_rng(7).normal(size=(6, 8, 10)).astype(np.float32)
    output = MrcOutput(tmp_path / "out.mrc", MapInfo(path=None, name="m", shape=data.shape, voxel_size=(1.0, 1.0, 1.0)), "test", (3, 4, 5))
    for z in (0, 3):
        for y in (0, 4):
            for x in (0, 5):
                output.target[z : z + 3, y : y + 4, x : x + 5] = data[z : z + 3, y : y + 4, x : x + 5]
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    output.finish((float(data.min()), float(data.max()), float(data.mean()), float(data.std())), None)
    assert synced == [str(output.partial)] and not (tmp_path / "out.mrc").exists()
    output.commit()
    assert np.array_equal(mrcfile.read(tmp_path / "out.mrc"), data)
