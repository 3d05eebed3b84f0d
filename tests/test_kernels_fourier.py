"""kernels/fourier.py: the exact and the reference's low-pass masks."""

import numpy as np

from occupy_dask.kernels.fourier import exact_lowpass_mask, reference_lowpass_mask


def test_lowpass_masks():
    shape, vs, lp = (16, 18, 20), (1.0, 1.2, 0.9), 4.0
    mask = exact_lowpass_mask(shape, vs, lp, (slice(None),) * 3)
    kz, ky, kx = np.meshgrid(np.fft.fftfreq(16, 1.0), np.fft.fftfreq(18, 1.2), np.fft.rfftfreq(20, 0.9), indexing="ij")
    assert np.array_equal(mask, np.sqrt(kz**2 + ky**2 + kx**2) <= 1 / lp)
    part = exact_lowpass_mask(shape, vs, lp, (slice(3, 9), slice(None), slice(2, 7)))
    assert np.array_equal(part, mask[3:9, :, 2:7])
    ref = reference_lowpass_mask((32,) * 3, 1.0, 8.0, (slice(None),) * 3)  # ks = 4
    k = np.round(np.fft.fftfreq(32) * 32)
    assert ref[0, 0, 0] and ref[int(np.flatnonzero(k == -4)[0]), 0, 0] and not ref[4, 0, 0]
    assert not ref[0, 0, 6]
