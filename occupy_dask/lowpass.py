"""Chunked Fourier low-pass (ALGORITHM.md sections 3 and 11) as a pencil FFT.

The 1D transforms run in the order ``scipy.fft.rfftn``/``irfftn`` use for a whole array, each
on whole lines, so the result is bit-identical to the unchunked transform whatever the
blocks: forward ``rfft(x)``, ``fft(z)``, ``fft(y)``; mask; inverse ``ifft(z)``, ``ifft(y)``,
``irfft(x)`` unnormalised and one final multiplication by the float32 ``1/N`` (where pocketfft
applies its normalisation). Three stages, complex64 throughout:

1. y-slabs ``(nz, sy, nx)``: rfft along x, fft along z;
2. x-pencils ``(nz, ny, sx)`` of the half spectrum: fft along y, mask from global frequency
   coordinates, ifft along z and y;
3. z-slabs ``(sz, ny, nxh)``: irfft along x.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.fft

from .kernels.fourier import exact_lowpass_mask, reference_lowpass_mask

TARGET_BLOCK_BYTES = 64 << 20


def _edge(n: int, line_bytes: int) -> int:
    """How many lines of ``line_bytes`` make a block of about TARGET_BLOCK_BYTES (1..n)."""
    return int(max(1, min(n, TARGET_BLOCK_BYTES // max(line_bytes, 1))))


def input_chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Chunks ``(nz, sy, nx)`` of the first stage: give the input in these and it is read once,
    with no all-to-all rechunk (which would hold the whole map in memory)."""
    nz, ny, nx = shape
    return (nz, _edge(ny, nz * (nx // 2 + 1) * 8), nx)


def _mask(shape, voxel_size, lowpass_angstrom, reference, region):
    if reference:
        return reference_lowpass_mask(shape, voxel_size[0], lowpass_angstrom, region)
    return exact_lowpass_mask(shape, voxel_size, lowpass_angstrom, region)


def _forward_xz(block: np.ndarray) -> np.ndarray:
    spec = scipy.fft.rfft(np.asarray(block, dtype=np.float32), axis=2, workers=1)
    return scipy.fft.fft(spec, axis=0, overwrite_x=True, workers=1)


def _filter_yz(block: np.ndarray, shape, voxel_size, lowpass_angstrom, reference, block_info=None):
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
    spec = scipy.fft.fft(block, axis=1, workers=1)
    with np.errstate(invalid="ignore"):  # NaN/Inf input: reported once, after the first pass, with counts
        spec *= _mask(shape, voxel_size, lowpass_angstrom, reference, region)
    spec = scipy.fft.ifft(spec, axis=0, norm="forward", overwrite_x=True, workers=1)
    return scipy.fft.ifft(spec, axis=1, norm="forward", overwrite_x=True, workers=1)


def _inverse_x(block: np.ndarray, shape) -> np.ndarray:
    out = scipy.fft.irfft(block, n=shape[2], axis=2, norm="forward", workers=1)
    out *= np.float32(1.0 / (shape[0] * shape[1] * shape[2]))
    return out.astype(np.float32, copy=False)


def lowpass(
    data: da.Array,
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    reference: bool = False,
    slab_planes: int | None = None,
    spill=None,
) -> da.Array:
    """Low-pass a lazy float32 map: keep spatial frequencies up to ``1/lowpass_angstrom``.

    ``voxel_size`` per stored axis in Å; ``reference`` selects the reference's shifted mask.
    Returns a lazy float32 array in slabs along axis 0 of ``slab_planes`` planes (default:
    about TARGET_BLOCK_BYTES of half spectrum each).

    ``spill(array, chunks, name)``, when given, computes an intermediate spectrum into a store
    chunked ``chunks`` and returns a lazy array reading it back: the all-to-all rechunks between
    stages then never hold the whole spectrum in memory.
    """
    shape = tuple(int(n) for n in data.shape)
    nz, ny, nx = shape
    nxh = nx // 2 + 1
    sy = input_chunks(shape)[1]
    sx = _edge(nxh, nz * ny * 8)
    sz = _edge(nz, ny * nxh * 8) if slab_planes is None else int(min(max(slab_planes, 1), nz))
    slabs = data.rechunk((nz, sy, nx))
    spec = slabs.map_blocks(
        _forward_xz,
        dtype=np.complex64,
        chunks=((nz,), slabs.chunks[1], (nxh,)),
        meta=np.empty((0, 0, 0), np.complex64),
    )
    if spill is not None:
        spec = spill(spec, (nz, slabs.chunks[1][0], sx), "spectrum")
    filtered = spec.rechunk((nz, ny, sx)).map_blocks(
        _filter_yz,
        shape=shape,
        voxel_size=tuple(voxel_size),
        lowpass_angstrom=float(lowpass_angstrom),
        reference=bool(reference),
        dtype=np.complex64,
        meta=np.empty((0, 0, 0), np.complex64),
    )
    if spill is not None:
        filtered = spill(filtered, (sz, ny, sx), "filtered")
    back = filtered.rechunk((sz, ny, nxh))
    return back.map_blocks(
        _inverse_x,
        shape=shape,
        dtype=np.float32,
        chunks=(back.chunks[0], (ny,), (nx,)),
        meta=np.empty((0, 0, 0), np.float32),
    )


def lowpass_numpy(data: np.ndarray, voxel_size, lowpass_angstrom: float, reference: bool = False) -> np.ndarray:
    """Whole-array version of :func:`lowpass` (tests, the unchunked benchmark baseline)."""
    data = np.asarray(data, dtype=np.float32)
    region = (slice(None),) * 3
    spec = scipy.fft.rfftn(data)
    spec *= _mask(data.shape, voxel_size, lowpass_angstrom, reference, region)
    return scipy.fft.irfftn(spec, s=data.shape).astype(np.float32, copy=False)
