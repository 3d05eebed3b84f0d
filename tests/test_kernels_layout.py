"""kernels/layout.py: chunks cut from a block's rows, as numpy slicing and zarr's padding make them."""

import numpy as np
import pytest

from occupy_dask.kernels.layout import gather_strips


def strips_by_numpy(block, x0, count, chunk):
    """Each chunk as numpy slicing and zero padding make it: the reference for the kernel."""
    out = np.zeros((count, *chunk), dtype=block.dtype)
    nz, ny, nx = block.shape
    for s in range(count):
        start = x0 + s * chunk[2]
        part = block[:, :, start : min(start + chunk[2], nx)]
        out[s, :nz, :ny, : part.shape[2]] = part
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize(
    "shape, x0, count, chunk",
    [
        ((3, 5, 16), 0, 4, (3, 5, 4)),  # whole chunks side by side
        ((3, 5, 17), 0, 5, (3, 5, 4)),  # the last chunk holds one column
        ((3, 5, 17), 8, 2, (3, 5, 4)),  # from the middle of the row
        ((2, 4, 9), 4, 2, (3, 5, 4)),  # the block's last planes and rows: padded
        ((1, 1, 3), 0, 1, (2, 2, 8)),
    ],
)
def test_gather_strips_cuts_and_pads_as_numpy(shape, x0, count, chunk, dtype):
    rng = np.random.default_rng(3)
    block = (rng.normal(size=shape) + (1j * rng.normal(size=shape) if dtype == np.complex64 else 0)).astype(dtype)
    block[0, 0, 0] = np.nan  # copied, not computed with
    got = gather_strips(block, x0, count, chunk)
    assert got.dtype == block.dtype and got.shape == (count, *chunk)
    assert np.array_equal(got, strips_by_numpy(block, x0, count, chunk), equal_nan=True)
    assert all(got[s].flags.c_contiguous for s in range(count))


def test_gather_strips_reads_strided_blocks_and_refuses_what_does_not_fit():
    block = np.arange(6 * 7 * 10, dtype=np.float32).reshape(6, 7, 10)[::2, 1:6]  # not contiguous
    assert np.array_equal(gather_strips(block, 2, 3, (3, 5, 3)), strips_by_numpy(block, 2, 3, (3, 5, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        gather_strips(block, 0, 1, (2, 5, 3))
