"""Blockwise MRC output: a sparse file created up front, regions written by dask tasks,
header statistics filled in at the end, renamed into place only when complete."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from .. import __version__
from .read import MapInfo

HEADER_BYTES = 1024


@dataclass(frozen=True)
class MrcTarget:
    """Picklable write target for ``da.store``: opens the data block of an MRC file per write."""

    path: str
    shape: tuple[int, int, int]
    offset: int = HEADER_BYTES

    def __setitem__(self, key, value) -> None:
        key = key if isinstance(key, tuple) else (key,)
        full_planes = len(key) == 3 and all(isinstance(k, slice) and k.indices(n) == (0, n, 1) for k, n in zip(key[1:], self.shape[1:]))
        full_planes = full_planes and isinstance(key[0], slice)
        if full_planes and key[0].step in (None, 1):
            # a slab of whole planes is one contiguous run of the file: one positioned write
            z0, _, _ = key[0].indices(self.shape[0])
            block = np.ascontiguousarray(value, dtype="<f4")
            with open(self.path, "r+b", buffering=0) as f:
                os.pwrite(f.fileno(), memoryview(block.reshape(-1)).cast("B"), self.offset + 4 * z0 * self.shape[1] * self.shape[2])
            return
        mm = np.memmap(self.path, dtype=np.float32, mode="r+", offset=self.offset, shape=self.shape)
        mm[key] = value
        mm.flush()
        del mm


def partial_path(final: Path) -> Path:
    """The temporary name an output is written under until it is complete."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def create_mrc(path: Path, info: MapInfo, label: str) -> MrcTarget:
    """Create a float32 MRC file of ``info.shape`` (data left unwritten) with the input's header
    geometry: voxel size, origin, start indices and axis order; plus a program label."""
    with mrcfile.new_mmap(str(path), shape=info.shape, mrc_mode=2, fill=None, overwrite=True) as mrc:
        h = mrc.header
        src = info.header
        if src is not None:
            for name in ("mx", "my", "mz", "mapc", "mapr", "maps", "nxstart", "nystart", "nzstart", "ispg"):
                h[name] = src[name]
            h.cella = src.cella
            h.cellb = src.cellb
            h.origin = src.origin
        else:
            sz, sy, sx = info.voxel_size
            mrc.voxel_size = (sx, sy, sz)
        mrc.add_label(f"occupy_dask {__version__}: {label}"[:80])
    return MrcTarget(str(path), tuple(info.shape))


def finish_mrc(path: Path, dmin: float, dmax: float, dmean: float, rms: float) -> None:
    """Write the data statistics into the header without reading the data."""
    with mrcfile.mmap(str(path), mode="r+", permissive=True) as mrc:
        mrc.header.dmin = dmin
        mrc.header.dmax = dmax
        mrc.header.dmean = dmean
        mrc.header.rms = rms
