"""Chunked Fourier low-pass (docs/method.md sections 3 and 11) as a pencil FFT.

The 1D transforms run in the order ``scipy.fft.rfftn``/``irfftn`` use for a whole array, each
on whole lines, so the result is bit-identical to the unchunked transform whatever the
blocks: forward ``rfft(x)``, ``fft(z)``, ``fft(y)``; mask; inverse ``ifft(z)``, ``ifft(y)``,
``irfft(x)`` unnormalised and one final multiplication by the float32 ``1/N`` (where pocketfft
applies its normalisation). Three stages, complex64 throughout:

1. z-slabs ``(sz, ny, nx)``, the map's own planes: rfft along x;
2. x-pencils ``(nz, ny, sx)`` of the half spectrum: fft along z and y, mask from global
   frequency coordinates, ifft along z and y;
3. z-slabs ``(sz, ny, nxh)``: irfft along x.

The first stage reads the map front to back, whole planes at a time, as every later pass does: a
block of rows from every plane (the transform along z in the first stage) is thousands of small
spans apart in the file, which a cold network or cloud disk serves one request at a time.

Only lines that can hold a frequency inside the cutoff are transformed after the first rfft:
columns ``kx`` beyond it are dropped after stage 1's rfft, rows ``kz`` beyond it before stage
2's fft along y, rows ``ky`` beyond it after the mask; they would be zero. Every remaining 1D
transform sees the same input as in the whole-array transform, so the result is unchanged (an
8 Å low-pass of a 1 Å map transforms a quarter of the half spectrum after the first step).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.fft

from .kernels.fourier import exact_lowpass_mask, lowpass_support, reference_lowpass_mask

TARGET_BLOCK_BYTES = 64 << 20


MIN_BLOCKS = 4  # every stage cuts even a small map into this many blocks, to keep the cores busy


def _edge(n: int, line_bytes: int, block_bytes: int = TARGET_BLOCK_BYTES) -> int:
    """How many lines of ``line_bytes`` make a block of about TARGET_BLOCK_BYTES (1..n), but
    no more than a MIN_BLOCKS-th of the ``n`` lines."""
    return int(max(1, min(n, block_bytes // max(line_bytes, 1), -(-n // MIN_BLOCKS))))


def input_chunks(shape: tuple[int, int, int], block_bytes: int = TARGET_BLOCK_BYTES) -> tuple[int, int, int]:
    """Chunks ``(sz, ny, nx)`` of the first stage, whole planes: give the input in these and it
    is read once, front to back, with no rechunk."""
    nz, ny, nx = shape
    return (_edge(nz, ny * (nx // 2 + 1) * 8, block_bytes), ny, nx)


def _mask(shape, voxel_size, lowpass_angstrom, reference, region):
    if reference:
        return reference_lowpass_mask(shape, voxel_size[0], lowpass_angstrom, region)
    return exact_lowpass_mask(shape, voxel_size, lowpass_angstrom, region)


FORWARD_BYTES = 16 << 20  # the first stage's transform takes planes in groups of about this many bytes of spectrum


def _forward_x(block: np.ndarray, nkx: int) -> np.ndarray:
    """rfft along x of a slab's planes, keeping the first ``nkx`` columns: a group of planes
    (about FORWARD_BYTES of their spectrum) per call.

    Each call takes the interpreter lock once. Plane by plane, the stage ran while numba set up
    its compiler in a background thread, which holds the lock: every call waited up to the
    switch interval (5 ms) for it, and the first slabs' transforms took 0.3-0.4 s instead of
    0.03-0.05 s (512^3)."""
    nz, ny, nx = block.shape
    out = np.empty((nz, ny, nkx), dtype=np.complex64)
    group = max(1, FORWARD_BYTES // max(1, ny * (nx // 2 + 1) * 8))
    for z in range(0, nz, group):
        planes = np.asarray(block[z : z + group], dtype=np.float32)
        out[z : z + group] = scipy.fft.rfft(planes, axis=2, workers=1)[:, :, :nkx]
    return out


def _filter_zy(block: np.ndarray, shape, voxel_size, lowpass_angstrom, reference, kz, ky, block_info=None):
    """fft z of the pencil's lines, then fft y of the kept (kz, kx) lines, mask, then ifft z
    and ifft y of the full lines (zeros where the mask removed everything)."""
    nz, ny, _ = shape
    x = slice(*block_info[0]["array-location"][2])
    spec = scipy.fft.fft(block, axis=0, workers=1)[kz]
    spec = scipy.fft.fft(spec, axis=1, overwrite_x=True, workers=1)
    with np.errstate(invalid="ignore"):  # NaN/Inf input: reported once, after the first pass, with counts
        spec *= _mask(shape, voxel_size, lowpass_angstrom, reference, (kz, slice(None), x))
    lines = np.zeros((nz, ky.size, block.shape[2]), dtype=np.complex64)
    lines[kz] = spec[:, ky]
    lines = scipy.fft.ifft(lines, axis=0, norm="forward", overwrite_x=True, workers=1)
    full = np.zeros((nz, ny, block.shape[2]), dtype=np.complex64)
    full[:, ky] = lines
    return scipy.fft.ifft(full, axis=1, norm="forward", overwrite_x=True, workers=1)


def _inverse_x(block: np.ndarray, shape) -> np.ndarray:
    spec = np.zeros((*block.shape[:2], shape[2] // 2 + 1), dtype=np.complex64)
    spec[:, :, : block.shape[2]] = block
    return inverse_x(spec, shape)


def inverse_x(spec: np.ndarray, shape, out: np.ndarray | None = None, columns: tuple[int, int] | None = None) -> np.ndarray:
    """The last step of the low-pass of a map of ``shape``: the unnormalised irfft along x of
    half-spectrum lines ``spec`` (``(..., nx // 2 + 1)`` complex64, left unchanged) times the
    float32 ``1/N``; into ``out`` when given, only the x ``columns`` (start, stop) of each line."""
    lines = scipy.fft.irfft(spec, n=shape[2], axis=2, norm="forward", workers=1)
    if columns is not None:
        lines = lines[..., columns[0] : columns[1]]
    if out is None:
        out = lines
    return np.multiply(lines, np.float32(1.0 / (shape[0] * shape[1] * shape[2])), out=out)


def spectrum_bytes(shape, voxel_size, lowpass_angstrom: float, reference: bool = False) -> int:
    """Bytes of the largest intermediate spectrum the pruned pencil FFT holds."""
    kz, _, nkx = lowpass_support(shape, voxel_size, lowpass_angstrom, reference)
    return max(kz.size, shape[0]) * shape[1] * nkx * 8


def lowpass(
    data: da.Array,
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    reference: bool = False,
    slab_planes: int | None = None,
    spill=None,
    block_bytes: int = TARGET_BLOCK_BYTES,
) -> da.Array:
    """Low-pass a lazy float32 map: keep spatial frequencies up to ``1/lowpass_angstrom``.

    ``voxel_size`` per stored axis in Å; ``reference`` selects the reference's shifted mask.
    Returns a lazy float32 array in slabs along axis 0 of ``slab_planes`` planes (default:
    about ``block_bytes`` of half spectrum each, with the input and the pencils as large;
    a smaller ``block_bytes`` lowers the stage's memory, not its result).

    ``spill(array, chunks, name, read_chunks)``, when given, computes an intermediate spectrum
    into a store chunked ``chunks`` and returns a lazy array reading it back in the next stage's
    blocks ``read_chunks``: the all-to-all rechunks between stages then never hold the whole
    spectrum in memory.
    """
    shape = tuple(int(n) for n in data.shape)
    nz, ny, nx = shape
    kz, ky, nkx = lowpass_support(shape, voxel_size, lowpass_angstrom, reference)
    sx = _edge(nkx, nz * ny * 8, block_bytes)
    first = input_chunks(shape, block_bytes)
    sz = first[0] if slab_planes is None else int(min(max(slab_planes, 1), nz))
    slabs = data.rechunk(first, method="tasks")  # (dask would import distributed to choose)
    spec = slabs.map_blocks(
        _forward_x,
        nkx=nkx,
        dtype=np.complex64,
        chunks=(slabs.chunks[0], (ny,), (nkx,)),
        meta=np.empty((0, 0, 0), np.complex64),
    )
    if spill is not None:
        spec = spill(spec, (slabs.chunks[0][0], ny, sx), "spectrum", (nz, ny, sx))
    filtered = spec.rechunk((nz, ny, sx), method="tasks").map_blocks(
        _filter_zy,
        shape=shape,
        voxel_size=tuple(voxel_size),
        lowpass_angstrom=float(lowpass_angstrom),
        reference=bool(reference),
        kz=kz,
        ky=ky,
        dtype=np.complex64,
        chunks=((nz,), (ny,), tuple(min(sx, nkx - s) for s in range(0, nkx, sx))),
        meta=np.empty((0, 0, 0), np.complex64),
    )
    if spill is not None:
        filtered = spill(filtered, (sz, ny, sx), "filtered", (sz, ny, nkx))
    back = filtered.rechunk((sz, ny, nkx), method="tasks")
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
