"""The box of an MRC map from its first header words, before numpy or mrcfile are imported
(the command line sizes its memory from it while it imports the rest)."""

from __future__ import annotations

import os
import struct

MRC_MODES = (0, 1, 2, 3, 4, 6, 12, 101)


def mrc_box(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(nz, ny, nx)`` of a plain (not compressed) MRC/CCP4 file, read from its header in
    either byte order; None for anything else (another format, a header that does not hold
    a sane box). Only a hint: the map is opened and checked properly later."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:  # a folder (zarr), a missing file: reported where the map is opened
        return None
    if len(head) < 16:
        return None
    for order in "<>":
        nx, ny, nz, mode = struct.unpack(order + "4i", head)
        if mode in MRC_MODES and min(nx, ny, nz) > 0 and max(nx, ny, nz) < 1 << 16:
            return nz, ny, nx
    return None
