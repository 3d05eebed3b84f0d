"""Copies between a block and the chunks of a store that cut its rows into strips.

The spilled spectra are stored in chunks a few columns wide (the next stage reads pencils along
x): at 1024^3 a slab of the half spectrum, 129 columns of complex64, goes to 17 chunk files of 8
columns, rows of 64 bytes. numpy copies each chunk's part row by row, one call per row; one pass
here over the block's rows fills every chunk at once, at about three times the speed.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _gather_strips(block, x0, out):  # pragma: no cover
    nz, ny, nx = block.shape
    n, _, _, width = out.shape
    for z in range(nz):
        for y in range(ny):
            for s in range(n):
                start = x0 + s * width
                stop = min(start + width, nx)
                for x in range(start, stop):
                    out[s, z, y, x - start] = block[z, y, x]


def gather_strips(block: np.ndarray, x0: int, count: int, chunk: tuple[int, int, int]) -> np.ndarray:
    """``count`` chunks of shape ``chunk`` cut from ``block`` (``(nz, ny, nx)``, ``nz`` and
    ``ny`` at most the chunk's), side by side along x from column ``x0``: an array
    ``(count, *chunk)`` of the block's dtype, each ``[s]`` contiguous. What the chunks hold
    beyond the block (past its rows, planes or last column) is 0, as zarr pads edge chunks."""
    cz, cy, cx = chunk
    nz, ny, nx = block.shape
    if nz > cz or ny > cy or x0 < 0:
        raise ValueError(f"a block of {block.shape} from column {x0} does not fit chunks of {chunk}")
    padded = nz < cz or ny < cy or x0 + count * cx > nx
    out = (np.zeros if padded else np.empty)((count, cz, cy, cx), dtype=block.dtype)
    _gather_strips(block, x0, out)
    return out
