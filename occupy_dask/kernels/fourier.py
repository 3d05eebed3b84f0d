"""Spherical low-pass masks on blocks of the (real-FFT) frequency grid (docs/method.md 3, 11)."""

from __future__ import annotations

import numpy as np


def frequencies(shape: tuple[int, int, int], voxel_size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies [1/Å] along each axis of the real-FFT grid of ``shape``:
    ``fftfreq(n_i, d=voxel_size_i)``, the last axis ``rfftfreq``."""
    return (
        np.fft.fftfreq(shape[0], d=voxel_size[0]),
        np.fft.fftfreq(shape[1], d=voxel_size[1]),
        np.fft.rfftfreq(shape[2], d=voxel_size[2]),
    )


def exact_lowpass_mask(
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    region: tuple[slice, slice, slice],
) -> np.ndarray:
    """Keep ``|k| <= 1/lowpass`` with ``k_i = fftfreq(n_i, d=voxel_size_i)`` (last axis rfft).

    ``region`` selects the block of the half-spectrum ``(n0, n1, n2//2+1)`` to return.
    """
    kz, ky, kx = (k[r] for k, r in zip(frequencies(shape, voxel_size), region))
    k2 = kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2
    return k2 <= (1.0 / lowpass_angstrom) ** 2


def reference_lowpass_mask(
    shape: tuple[int, int, int],
    voxel_size: float,
    lowpass_angstrom: float,
    region: tuple[slice, slice, slice],
) -> np.ndarray:
    """The reference's shifted-grid mask (docs/method.md section 11), for a cubic box."""
    n = shape[0]
    ks = min(int(np.floor(n * voxel_size / lowpass_angstrom)), n // 2)
    kz = np.round(np.fft.fftfreq(n) * n).astype(np.int64)[region[0]]
    ky = np.round(np.fft.fftfreq(n) * n).astype(np.int64)[region[1]]
    kx = np.arange(n // 2 + 1, dtype=np.int64)[region[2]]
    box = ((kz >= -ks) & (kz <= ks - 1))[:, None, None] & ((ky >= -ks) & (ky <= ks - 1))[None, :, None] & (kx <= ks)[None, None, :]
    fz = (kz.astype(np.float32) + np.float32(0.5))[:, None, None]
    fy = (ky.astype(np.float32) + np.float32(0.5))[None, :, None]
    fx = (kx.astype(np.float32) - np.float32(0.5))[None, None, :]
    radius = np.sqrt(fz * fz + fy * fy + fx * fx)
    return box & (radius <= np.float32(ks + 1))


def lowpass_support(
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    reference: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Frequency indices outside of which the low-pass mask is zero: the kz and ky indices
    (ascending, into the full FFT axes) and the number ``nkx`` of leading rfft columns.

    Exact mask: ``k_a**2 <= (1/lowpass)**2`` per axis (the mask at the other two frequencies 0).
    Reference mask: its box, ``-ks <= k <= ks-1`` along z and y, ``kx <= ks``; the sphere of
    radius ``ks+1`` around the shifted grid contains the box's axis-aligned extremes.
    """
    nz, ny, nx = shape
    if reference:
        n = shape[0]
        ks = min(int(np.floor(n * voxel_size[0] / lowpass_angstrom)), n // 2)
        k = np.round(np.fft.fftfreq(n) * n).astype(np.int64)
        along = np.flatnonzero((k >= -ks) & (k <= ks - 1))
        return along, along.copy(), min(ks + 1, nx // 2 + 1)
    limit = (1.0 / lowpass_angstrom) ** 2
    fz, fy, fx = frequencies(shape, voxel_size)
    kz = np.flatnonzero(fz**2 <= limit)
    ky = np.flatnonzero(fy**2 <= limit)
    nkx = int(np.count_nonzero(fx**2 <= limit))
    return kz, ky, nkx
