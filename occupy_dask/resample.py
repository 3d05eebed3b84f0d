"""``--max-box N``: a quick preview of a large map, as OccuPy's ``--max-box`` does it.

The map is Fourier-cropped to a box of at most N voxels (a square window in frequency, the
amplitudes scaled by the ratio of voxel counts), the method runs on that map, and each modified
map is Fourier-padded back to the input's box. The crop reads the input one slab of planes at a
time and the padded maps are made one slab at a time, so neither holds the full-size map in
memory; only the reduced map and its spectrum (about N^3 values) are whole.

The frequencies kept are those of the reference: ``-k .. k-1`` along the sections and rows and
``0 .. k`` along the columns (``k`` half the reduced box), placed at the same frequencies when
padding back.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import scipy.fft as spfft

from .errors import SettingsError
from .settings import check_max_box

SLAB_BYTES = 64 << 20  # input planes read per step of the crop


def reduced_shape(shape: tuple[int, int, int], max_box: int | None) -> tuple[int, int, int] | None:
    """The box the map is cropped to: the largest axis becomes ``max_box``, the others shrink by
    the same ratio to even sizes; None when the map fits (nothing to do)."""
    check_max_box(max_box)
    if max_box is None or max(shape) <= max_box:
        return None
    ratio = max_box / max(shape)
    return tuple(max(2, 2 * int(round(n * ratio / 2))) for n in shape)


def reduced_voxel_size(voxel_size, shape, reduced) -> tuple[float, float, float]:
    """Voxel size (Å, per stored axis) of the reduced map: the same box length in fewer voxels."""
    return tuple(float(v) * n / m for v, n, m in zip(voxel_size, shape, reduced))


def _kept(n: int, m: int) -> np.ndarray:
    """Indices (in a length-``n`` FFT) of the frequencies ``-m/2 .. m/2-1``, in the order of a
    length-``m`` FFT."""
    half = m // 2
    return np.concatenate([np.arange(0, half), np.arange(n - half, n)])


def fourier_crop(
    source, shape: tuple[int, int, int], reduced: tuple[int, int, int], reference: bool = False
) -> tuple[np.ndarray, tuple[float, float]]:
    """The map ``source`` (``__getitem__`` over stored axes) Fourier-cropped to ``reduced``
    (float32), amplitudes scaled by ``prod(reduced)/prod(shape)``, and the input's (min, max).
    Slabs of planes are read in turn: each is transformed along columns and rows and cropped;
    the sections are transformed once all are in. With ``reference`` the whole map is read and
    transformed at once, as the reference does (the same numbers to float32 rounding)."""
    nz, ny, nx = shape
    if reference:
        if len(set(shape)) != 1 or len(set(reduced)) != 1 or nz % 2:
            raise SettingsError(f"--max-box with --reference-compatible needs an even cubic box (as the reference), got {shape}")
        data = np.asarray(source[0:nz, 0:ny, 0:nx], dtype=np.float32)
        return fourier_crop_reference(data, reduced), (float(data.min()), float(data.max()))
    mz, my, mx = reduced
    rows, columns = _kept(ny, my), mx // 2 + 1
    partial = np.empty((nz, my, columns), dtype=np.complex64)
    step = max(1, SLAB_BYTES // (4 * ny * nx))
    lo, hi = np.inf, -np.inf
    for z0 in range(0, nz, step):
        slab = np.asarray(source[z0 : min(z0 + step, nz), 0:ny, 0:nx], dtype=np.float32)
        lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
        spectrum = spfft.rfft(slab, axis=2)[:, :, :columns]
        partial[z0 : z0 + step] = spfft.fft(spectrum, axis=1)[:, rows, :]
    cropped = spfft.fft(partial, axis=0)[_kept(nz, mz)]
    out = spfft.irfftn(cropped, s=reduced, axes=(0, 1, 2))
    out *= np.float32(math.prod(m / n for m, n in zip(reduced, shape)))
    return np.asarray(out, dtype=np.float32), (lo, hi)


def fourier_pad(array: da.Array | np.ndarray, shape: tuple[int, int, int], slab_planes: int) -> da.Array:
    """A reduced map Fourier-padded back to ``shape`` (lazy float32, slabs of ``slab_planes``
    planes), amplitudes scaled by ``prod(shape)/prod(reduced)``. The reduced spectrum is
    transformed back along the sections once (``shape[0]`` x the reduced rows and columns);
    each slab then finishes the rows and columns of its planes."""
    nz, ny, nx = shape

    def sections(reduced: np.ndarray) -> np.ndarray:
        mz, my, mx = reduced.shape
        spectrum = spfft.rfftn(np.asarray(reduced, dtype=np.float32))
        padded = np.zeros((nz, my, spectrum.shape[2]), dtype=np.complex64)
        padded[_kept(nz, mz)] = spectrum
        return spfft.ifft(padded, axis=0)

    def planes(along_sections: np.ndarray, z0: int, z1: int) -> np.ndarray:
        my = along_sections.shape[1]
        part = np.zeros((z1 - z0, ny, along_sections.shape[2]), dtype=np.complex64)
        part[:, _kept(ny, my)] = along_sections[z0:z1]
        out = spfft.irfft(spfft.ifft(part, axis=1), n=nx, axis=2)
        out *= np.float32(math.prod(n / m for n, m in zip(shape, np.shape(array))))
        return np.asarray(out, dtype=np.float32)

    along_sections = dask.delayed(sections, pure=True)(array)
    blocks = [
        da.from_delayed(
            dask.delayed(planes, pure=True)(along_sections, z0, min(z0 + slab_planes, nz)), (min(z0 + slab_planes, nz) - z0, ny, nx), np.float32
        )
        for z0 in range(0, nz, slab_planes)
    ]
    return da.concatenate(blocks, axis=0)


def fourier_crop_reference(data: np.ndarray, reduced: tuple[int, int, int]) -> np.ndarray:
    """The crop as the reference computes it, on the whole (cubic, even) map at once: one rfftn,
    the centred window of the shifted spectrum, one irfftn (``--reference-compatible``)."""
    n, m = data.shape[0], reduced[0]
    k, mid = m // 2, n // 2
    spectrum = spfft.fftshift(spfft.rfftn(np.asarray(data, dtype=np.float32)), axes=(0, 1))
    window = spectrum[mid - k : mid + k, mid - k : mid + k, : k + 1]
    out = spfft.irfftn(spfft.ifftshift(window, axes=(0, 1)))
    out *= (m / n) ** 3
    return np.asarray(out, dtype=np.float32)


def fourier_pad_reference(data: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The way back as the reference computes it: the reduced spectrum placed centrally in the
    shifted spectrum of the full box, one irfftn (``--reference-compatible``)."""
    m, n = data.shape[0], shape[0]
    k, mid = m // 2, n // 2
    spectrum = spfft.fftshift(spfft.rfftn(np.asarray(data, dtype=np.float32)), axes=(0, 1))
    padded = np.zeros((n, n, mid + 1), dtype=np.complex64)
    padded[mid - k : mid + k, mid - k : mid + k, : k + 1] = spectrum[:, :, : k + 1]
    out = spfft.irfftn(spfft.ifftshift(padded, axes=(0, 1)))
    out *= (n / m) ** 3
    return np.asarray(out, dtype=np.float32)
