"""Chunked Fourier low-pass (ALGORITHM.md sections 3 and 11) as a pencil FFT.

FFT the two fast axes on slabs, rechunk to pencils along the slow axis, FFT it, apply the
spherical mask from global frequency coordinates, and back. complex64 throughout.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.fft

from .kernels.fourier import exact_lowpass_mask, reference_lowpass_mask

TARGET_BLOCK_BYTES = 64 << 20


def _slab_edge(shape: tuple[int, int, int], itemsize: int = 8) -> int:
    plane = shape[1] * (shape[2] // 2 + 1) * itemsize
    return int(max(1, min(shape[0], TARGET_BLOCK_BYTES // max(plane, 1))))


def _pencil_edges(shape: tuple[int, int, int], itemsize: int = 8) -> tuple[int, int]:
    nxh = shape[2] // 2 + 1
    columns = max(1, TARGET_BLOCK_BYTES // (shape[0] * itemsize))
    py = int(max(1, min(shape[1], np.sqrt(columns))))
    px = int(max(1, min(nxh, columns // py)))
    return py, px


def _forward_yx(block: np.ndarray) -> np.ndarray:
    spec = scipy.fft.rfft(np.asarray(block, dtype=np.float32), axis=2, workers=1)
    return scipy.fft.fft(spec, axis=1, overwrite_x=True, workers=1)


def _filter_z(block: np.ndarray, shape, voxel_size, lowpass_angstrom, reference, block_info=None):
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
    if reference:
        mask = reference_lowpass_mask(shape, voxel_size[0], lowpass_angstrom, region)
    else:
        mask = exact_lowpass_mask(shape, voxel_size, lowpass_angstrom, region)
    spec = scipy.fft.fft(block, axis=0, workers=1)
    spec *= mask
    return scipy.fft.ifft(spec, axis=0, overwrite_x=True, workers=1)


def _inverse_yx(block: np.ndarray, nx: int) -> np.ndarray:
    spec = scipy.fft.ifft(block, axis=1, workers=1)
    return scipy.fft.irfft(spec, n=nx, axis=2, overwrite_x=True, workers=1).astype(np.float32, copy=False)


def lowpass(
    data: da.Array,
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    reference: bool = False,
) -> da.Array:
    """Low-pass a lazy float32 map: keep spatial frequencies up to ``1/lowpass_angstrom``.

    ``voxel_size`` per stored axis in Å; ``reference`` selects the reference's shifted mask.
    Returns a lazy float32 array in slabs along axis 0.
    """
    shape = tuple(int(n) for n in data.shape)
    nz, ny, nx = shape
    nxh = nx // 2 + 1
    slab = _slab_edge(shape)
    py, px = _pencil_edges(shape)
    slabs = data.rechunk((slab, ny, nx))
    spec = slabs.map_blocks(
        _forward_yx,
        dtype=np.complex64,
        chunks=(slabs.chunks[0], (ny,), (nxh,)),
        meta=np.empty((0, 0, 0), np.complex64),
    )
    pencils = spec.rechunk((nz, py, px))
    filtered = pencils.map_blocks(
        _filter_z,
        shape=shape,
        voxel_size=tuple(voxel_size),
        lowpass_angstrom=float(lowpass_angstrom),
        reference=bool(reference),
        dtype=np.complex64,
        meta=np.empty((0, 0, 0), np.complex64),
    )
    back = filtered.rechunk((slab, ny, nxh))
    return back.map_blocks(
        _inverse_yx,
        nx=nx,
        dtype=np.float32,
        chunks=(back.chunks[0], (ny,), (nx,)),
        meta=np.empty((0, 0, 0), np.float32),
    )


def lowpass_numpy(data: np.ndarray, voxel_size, lowpass_angstrom: float, reference: bool = False) -> np.ndarray:
    """Whole-array version of :func:`lowpass` (tests, the unchunked benchmark baseline)."""
    data = np.asarray(data, dtype=np.float32)
    region = (slice(None),) * 3
    if reference:
        mask = reference_lowpass_mask(data.shape, voxel_size[0], lowpass_angstrom, region)
    else:
        mask = exact_lowpass_mask(data.shape, voxel_size, lowpass_angstrom, region)
    spec = scipy.fft.rfftn(data)
    spec *= mask
    return scipy.fft.irfftn(spec, s=data.shape).astype(np.float32, copy=False)
