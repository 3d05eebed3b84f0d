"""Per-voxel stages of the fused per-chunk pass: scale, noise-level recalibration, and the
geometry of the inscribed ellipsoid (docs/method.md sections 5-7)."""

from __future__ import annotations

import threading

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def add_moment(x, total, squares, lo, hi):  # pragma: no cover
    """Running ``(sum, sum of squares, min, max)`` with the float64 ``x`` added: every kernel that
    sums values adds them so, in voxel order, and gets the same bits."""
    total += x
    squares += x * x
    if x < lo:
        lo = x
    if x > hi:
        hi = x
    return total, squares, lo, hi


@numba.njit(cache=True, nogil=True)
def moments(values):  # pragma: no cover
    """``(sum, sum of squares, min, max)`` of a 1D array in one pass, sums in float64."""
    total, squares, lo, hi = 0.0, 0.0, np.inf, -np.inf
    for v in values:
        total, squares, lo, hi = add_moment(np.float64(v), total, squares, lo, hi)
    return total, squares, lo, hi


def load_in_background() -> threading.Thread:
    """Start numba in a background thread while the low-pass (numpy and FFTs) runs: its first
    call of a compiled kernel sets up its compiler, about 0.2 s, during which every other
    thread that calls a kernel would wait. The same thread then imports scipy.optimize (about
    0.1 s), which the solvent model's fit needs once the reductions are done. Errors are left to
    the real calls."""

    def load() -> None:
        try:
            moments(np.zeros(1, np.float32))
            import scipy.optimize  # noqa: F401
        except Exception:  # noqa: BLE001 - the same call in the run reports it
            pass

    thread = threading.Thread(target=load, name="occupy-numba-load", daemon=True)
    thread.start()
    return thread


@numba.njit(cache=True, nogil=True)
def _masked_sum(scale, data, value):  # pragma: no cover
    count = 0
    total = 0.0
    nz, ny, nx = scale.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if scale[z, y, x] == value:
                    count += 1
                    total += np.float64(data[z, y, x])
    return count, total


def masked_sum(scale: np.ndarray, data: np.ndarray, value: float) -> tuple[int, float]:
    """``(count, float64 sum of data)`` over the voxels where ``scale == value`` (same-shape
    blocks; ``data`` may be a view into a padded block)."""
    count, total = _masked_sum(scale, data, np.float32(value))
    return int(count), float(total)


def local_scale(max_filtered: np.ndarray, s_max: float, out: np.ndarray | None = None) -> np.ndarray:
    """``clip(s_i / s_max, 0, 1)`` in float32 (into ``out``, which may be ``max_filtered``)."""
    out = np.divide(max_filtered, np.float32(s_max), out=out, dtype=np.float32)
    return np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def recalibrate_noise_level(scale: np.ndarray, confidence_limit: float, out: np.ndarray | None = None) -> np.ndarray:
    """``--nlrc``: stretch ``[confidence_limit, 1]`` onto ``[0, 1]`` (into ``out``, may be ``scale``)."""
    lim = np.float32(confidence_limit)
    out = np.subtract(scale, lim, out=out, dtype=np.float32)
    np.divide(out, np.float32(1.0) - lim, out=out)
    return np.clip(out, np.float32(0.0), np.float32(1.0), out=out)


def ellipsoid_terms(shape, start, stop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis float64 terms ``((i + 0.5 - n/2) / (n/2))**2`` of the block ``[start, stop)``: a
    voxel is inside the inscribed ellipsoid when ``(t_z + t_y) + t_x <= 1``."""
    terms = []
    for n, a, b in zip(shape, start, stop):
        half = n / 2.0
        terms.append(((np.arange(a, b) + 0.5 - half) / half) ** 2)
    return tuple(terms)


def inscribed_ellipsoid(shape, start, stop) -> np.ndarray:
    """Boolean block ``[start, stop)`` of the ellipsoid inscribed in a box of ``shape`` voxels
    (voxel centres at ``i + 0.5``; semi-axes half the box)."""
    return ellipsoid_mask(ellipsoid_terms(shape, start, stop))


def ellipsoid_mask(axis_terms) -> np.ndarray:
    """The inside of the inscribed ellipsoid over a block, from its :func:`ellipsoid_terms`,
    with the test the kernels make voxel by voxel (:func:`inside_ellipsoid`)."""
    tz, ty, tx = axis_terms
    return inside_ellipsoid(tz[:, None, None] + ty[None, :, None], tx[None, None, :])


@numba.njit(cache=True, nogil=True, inline="always")
def inside_ellipsoid(zy, tx):  # pragma: no cover
    """Whether a voxel lies inside the inscribed ellipsoid, from ``t_z + t_y`` of its plane and
    row and ``t_x`` of its column (added in this order, so every caller agrees to the bit)."""
    return zy + tx <= 1.0


@numba.njit(cache=True, nogil=True)
def _block_ranges(values, tz, ty, tx, out):  # pragma: no cover
    lo, hi, inside_lo, inside_hi = out[0], out[1], out[2], out[3]
    nz, ny, nx = values.shape
    for z in range(nz):
        for y in range(ny):
            zy = tz[z] + ty[y]
            for x in range(nx):
                v = np.float64(values[z, y, x])
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
                if inside_ellipsoid(zy, tx[x]):
                    if v < inside_lo:
                        inside_lo = v
                    if v > inside_hi:
                        inside_hi = v
    out[0], out[1], out[2], out[3] = lo, hi, inside_lo, inside_hi


@numba.njit(cache=True, nogil=True)
def _inside_runs(plane, zy, tx, centre, out):  # pragma: no cover
    """Copy the voxels of a plane inside the ellipsoid (``zy``: ``t_z + t_y`` per row) into
    ``out``, row after row; returns how many. A row's inside voxels are one run: ``t_x`` falls to
    its least value (at ``centre``) and rises again, and a sum rounded to nearest never decreases
    as a term grows, so the test holds on an interval, whose ends are found by bisection with the
    test itself (:func:`inside_ellipsoid`)."""
    n = 0
    ny, nx = plane.shape
    for y in range(ny):
        if not inside_ellipsoid(zy[y], tx[centre]):
            continue
        lo, hi = 0, centre  # the first inside: hi is inside
        while lo < hi:
            mid = (lo + hi) // 2
            if inside_ellipsoid(zy[y], tx[mid]):
                hi = mid
            else:
                lo = mid + 1
        first = lo
        lo, hi = centre, nx - 1  # the last inside: lo is inside
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if inside_ellipsoid(zy[y], tx[mid]):
                lo = mid
            else:
                hi = mid - 1
        m = lo + 1 - first
        out[n : n + m] = plane[y, first : lo + 1]
        n += m
    return n


def block_ranges(values: np.ndarray, axis_terms) -> np.ndarray:
    """(min, max, min inside, max inside the inscribed ellipsoid) float64 of a block, the same
    numbers as the low-passed rows of :func:`~occupy_dask.kernels.sweep.block_moments` (NaN ignored; inf when empty).

    numpy's vectorised minimum and maximum, plane by plane, over the plane and over its inside
    voxels gathered into one run (the sequential sweep took 0.9-1.0 ns per voxel). The least and
    the largest of floats that are not NaN are one value each, whatever the order, except a zero
    (-0 and +0 compare equal, and the sweep keeps the first); so a block holding NaN or an
    infinity, or whose range ends at a zero, is swept as before."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    fast = _empty_ranges()
    if values.size and _ranges_by_planes(values, *axis_terms, fast):
        return fast
    out = _empty_ranges()
    _block_ranges(values, *axis_terms, out)
    return out


def _empty_ranges() -> np.ndarray:
    """The ranges of no voxel: (min, max, min inside, max inside) = (inf, -inf, inf, -inf)."""
    return np.array([np.inf, -np.inf, np.inf, -np.inf])


def _ranges_by_planes(values, tz, ty, tx, out) -> bool:
    """:func:`block_ranges` into ``out`` (starting from :func:`_empty_ranges`) with numpy's
    minimum and maximum; False where those need not give the sweep's values (NaN or an infinity
    in the block, a zero at an end of a range), and ``out`` is then left part-way."""
    centre = int(np.argmin(tx))
    run = np.empty(values.shape[1] * values.shape[2], np.float32)
    for z in range(values.shape[0]):
        plane = values[z]
        lo, hi = float(plane.min()), float(plane.max())  # NaN when the plane holds one
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return False
        out[0], out[1] = min(out[0], lo), max(out[1], hi)
        n = _inside_runs(plane, tz[z] + ty, tx, centre, run)
        if n:
            out[2], out[3] = min(out[2], float(run[:n].min())), max(out[3], float(run[:n].max()))
    ends = out if np.isfinite(out[2]) else out[:2]  # no voxel inside: that range stays empty
    return bool(np.all(ends != 0.0))


@numba.njit(cache=True, nogil=True)
def _kernel_maxima(levels, shape, noise, out):  # pragma: no cover
    # shape and noise are (n_v, n_kernels): the running maxima of all kernels advance together,
    # one voxel of the kernel at a time (element-wise, so the compiler vectorises it)
    for j in range(levels.shape[0]):
        v = levels[j]
        top = out[j]
        for i in range(shape.shape[1]):
            top[i] = v * shape[0, i] + noise[0, i]
        for k in range(1, shape.shape[0]):
            for i in range(shape.shape[1]):
                top[i] = max(top[i], v * shape[k, i] + noise[k, i])
    return out


def kernel_maxima(levels: np.ndarray, shape: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``(n_levels, n_kernels)`` float32: for each signal level ``v`` and each kernel ``i``,
    ``max_k(v * shape[i, k] + noise[i, k])`` in float32 (as numpy computes it, without
    the ``(n_kernels, n_v)`` array per level)."""
    shape = np.ascontiguousarray(np.asarray(shape, dtype=np.float32).T)
    noise = np.ascontiguousarray(np.asarray(noise, dtype=np.float32).T)
    out = np.empty((len(levels), shape.shape[1]), dtype=np.float32)
    return _kernel_maxima(np.asarray(levels, dtype=np.float32), shape, noise, out)


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _inverse_response(m, table, start, step, offset):  # pragma: no cover
    """``h^-1(m)`` (float64): linear in ``table`` (``h^-1`` at ``start + i * step``), 0 below it,
    ``m - offset`` above it."""
    last = table.size - 1
    if m > start + last * step:
        return m - offset
    x = max((m - start) / step, 0.0)
    j = min(int(x), last - 1)
    f = x - j
    return np.float64(table[j]) * (1.0 - f) + np.float64(table[j + 1]) * f


@numba.njit(cache=True, nogil=True)
def _inverse_response_scalar(m, table, start, step, offset):  # pragma: no cover
    return _inverse_response(m, table, start, step, offset)


@numba.njit(cache=True, nogil=True, error_model="numpy")  # no zero-divisor checks per voxel: step, signal_max > 0
def _debiased_scale(maxima, table, start, step, offset, signal_max, out):  # pragma: no cover
    flat_in = maxima.ravel()
    flat_out = out.ravel()
    for i in range(flat_in.size):
        s = _inverse_response(np.float64(flat_in[i]), table, start, step, offset) / signal_max
        flat_out[i] = np.float32(min(max(s, 0.0), 1.0))


def inverse_response(value: float, floor) -> float:
    """``h^-1`` of one value (in map units) for ``floor`` a :class:`~occupy_dask.debias.NoiseFloor`:
    the signal maximum that reads ``value`` through the maximum filter of signal plus noise."""
    return float(_inverse_response_scalar(float(value), floor.table, floor.table_start, floor.table_step, floor.offset))


def debiased_scale(maxima: np.ndarray, floor, out: np.ndarray | None = None) -> np.ndarray:
    """``--debias``: ``clip(h^-1(M) / h^-1(s_max), 0, 1)`` in float32 of the ball maxima ``M``
    (into ``out``, which may be ``maxima``), with ``floor`` a :class:`~occupy_dask.debias.NoiseFloor`
    and ``h^-1`` its tabulated inverse response (:func:`inverse_response` per voxel)."""
    maxima = np.ascontiguousarray(maxima)
    if out is None:
        out = np.empty(maxima.shape, dtype=np.float32)
    _debiased_scale(maxima, floor.table, floor.table_start, floor.table_step, floor.offset, floor.signal_max, out)
    return out
