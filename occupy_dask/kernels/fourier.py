"""Spherical low-pass masks on blocks of the (real-FFT) frequency grid (ALGORITHM.md 3, 11)."""

from __future__ import annotations

import numpy as np


def exact_lowpass_mask(
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    lowpass_angstrom: float,
    region: tuple[slice, slice, slice],
) -> np.ndarray:
    """Keep ``|k| <= 1/lowpass`` with ``k_i = fftfreq(n_i, d=voxel_size_i)`` (last axis rfft).

    ``region`` selects the block of the half-spectrum ``(n0, n1, n2//2+1)`` to return.
    """
    kz = np.fft.fftfreq(shape[0], d=voxel_size[0])[region[0]]
    ky = np.fft.fftfreq(shape[1], d=voxel_size[1])[region[1]]
    kx = np.fft.rfftfreq(shape[2], d=voxel_size[2])[region[2]]
    k2 = kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2
    return k2 <= (1.0 / lowpass_angstrom) ** 2


def reference_lowpass_mask(
    shape: tuple[int, int, int],
    voxel_size: float,
    lowpass_angstrom: float,
    region: tuple[slice, slice, slice],
) -> np.ndarray:
    """The reference's shifted-grid mask (ALGORITHM.md section 11), for a cubic box."""
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
