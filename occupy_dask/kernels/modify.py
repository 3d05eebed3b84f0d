"""Map modification by local scale on numpy blocks (docs/method.md section 8).

Everything here is float32 and works voxel by voxel, except the synthetic solvent, which is
drawn from a random stream fixed per global noise tile so that it does not depend on chunking.
"""

from __future__ import annotations

import numba
import numpy as np

NOISE_TILE = 64  # edge of the global tiles that own one random stream each
SIGMOID_TABLE_SIZE = 100  # entries of the reference's sigmoid table


POWER_MEMO_BITS = 12  # the powers of the last scale values, remembered by their bits: 4096 entries, 32 KB


# error_model="numpy": no check for a zero divisor at every voxel (every s divided by lies
# above the limit, which is >= 0), so the loops vectorise: 10x faster for the amount 1
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _power_factor(scale, bits, exponent, limit, out):  # pragma: no cover
    # numpy's ``array ** scalar`` (which the reference uses) takes these exponents exactly as
    # 1/s, sqrt(s), s*s, s and 1; every other exponent goes through powf (``bits``: the scale's
    # float32 bits, as uint32)
    one = np.float32(1.0)
    if exponent == -1.0:
        for i in range(scale.size):
            s = scale[i]
            out[i] = one / s if s > limit else one
    elif exponent == 0.5:
        for i in range(scale.size):
            s = scale[i]
            out[i] = np.sqrt(s) if s > limit else one
    elif exponent == 2.0:
        for i in range(scale.size):
            s = scale[i]
            out[i] = s * s if s > limit else one
    elif exponent == 1.0:
        for i in range(scale.size):
            s = scale[i]
            out[i] = s if s > limit else one
    elif exponent == 0.0:
        for i in range(scale.size):
            out[i] = one
    else:
        # powf costs about 5 ns a call and does not vectorise (a branch the compiler turns into
        # a select even calls it for the voxels at or below the limit); a scale map holds few
        # distinct values, since a local maximum fills the ball around it, so each value's power
        # is kept in a small table by the value's bits: the same float32, the same powf result
        size = 1 << POWER_MEMO_BITS
        keys = np.full(size, np.uint32(0xFFFFFFFF))  # a NaN's bits: never a scale above the limit
        powers = np.empty(size, np.float32)
        for i in range(scale.size):
            s = scale[i]
            if s > limit:
                b = bits[i]
                k = ((np.uint64(b) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) >> np.uint64(32 - POWER_MEMO_BITS)
                if keys[k] != b:
                    keys[k] = b
                    powers[k] = s**exponent
                out[i] = powers[k]
            else:
                out[i] = one
    return out


def power_factor(scale: np.ndarray, exponent: float, limit: float, out: np.ndarray | None = None) -> np.ndarray:
    """Amplify/attenuate factor ``S_t ** exponent`` (exponent ``-a`` for amount ``a``), float32,
    into ``out`` when given."""
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    if out is None:
        out = np.empty(scale.shape, dtype=np.float32)
    elif not (out.flags.c_contiguous and out.dtype == np.float32 and out.shape == scale.shape):
        raise ValueError("out must be a C-contiguous float32 array shaped like the scale")
    flat = scale.ravel()
    _power_factor(flat, flat.view(np.uint32), np.float32(exponent), np.float32(limit), out.reshape(-1))
    return out


def sigmoid_mu(pivot: float, power: float) -> float:
    """The ``mu`` of the sigmoid that keeps ``f(pivot) = pivot``."""
    return 1.0 / (1.0 + (pivot / (1.0 - pivot)) ** (1.0 / power - 1.0))


def sigmoid(x: np.ndarray, power: float, pivot: float) -> np.ndarray:
    """``f(x) = 1/(1 + ((x(1-mu))/(mu(1-x)))^-p)`` on [0, 1], with ``f(0)=0``, ``f(1)=1`` and
    ``f(pivot) = pivot``; float64."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    mu = sigmoid_mu(pivot, power)
    out = np.zeros_like(x)
    inner = (x > 0) & (x < 1)
    xi = x[inner]
    out[inner] = 1.0 / (1.0 + (mu * (1.0 - xi) / (xi * (1.0 - mu))) ** power)
    out[x >= 1] = 1.0
    return out


def sigmoid_table_reference(power: float, pivot: float, n: int = SIGMOID_TABLE_SIZE) -> np.ndarray:
    """The reference's sigmoid table (docs/method.md 11): ``f`` on ``linspace(0, 1, n)`` in float32,
    ``f(0) = 0``, made non-decreasing."""
    x = np.linspace(0.0, 1.0, n).astype(np.float32)
    mu = sigmoid_mu(pivot, power)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.float32(mu) * (np.float32(1.0) - x) / (x * np.float32(1.0 - mu))
        out = np.float32(1.0) / (np.power(ratio, np.float32(power)) + np.float32(1.0))
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)
    out[x == 0] = 0.0
    return np.maximum.accumulate(out)


def sigmoid_factor(scale: np.ndarray, power: float, pivot: float, reference: bool = False) -> np.ndarray:
    """Sigmoid factor ``f(S)/S`` where ``S > 0``, 1 where ``S = 0``. With ``reference`` ``f``
    comes from the 100-entry table at index ``int(|S|*100 - 1)`` (-1 wraps to the last entry)."""
    scale = np.asarray(scale, dtype=np.float32)
    if reference:
        table = sigmoid_table_reference(power, pivot)
        mapped = table[(np.abs(scale) * np.float32(table.size) - np.float32(1.0)).astype(np.intp)]
    else:
        mapped = sigmoid(scale, power, pivot).astype(np.float32)
    factor = np.ones_like(scale)
    positive = scale > 0
    factor[positive] = mapped[positive] / scale[positive]
    return factor


def synthetic_solvent(start, stop, seed: int, mu: float, sigma: float) -> np.ndarray:
    """Gaussian noise ``N(mu, sigma)`` (float32) for the block ``[start, stop)`` of the map.

    Each global ``NOISE_TILE``^3 tile has its own stream seeded by ``(seed, tile index)``, so
    a voxel gets the same value whatever block it is computed in.
    """
    start = tuple(int(v) for v in start)
    stop = tuple(int(v) for v in stop)
    out = np.empty(tuple(b - a for a, b in zip(start, stop)), dtype=np.float32)
    tiles = [range(a // NOISE_TILE, (b - 1) // NOISE_TILE + 1) for a, b in zip(start, stop)]
    for tz in tiles[0]:
        for ty in tiles[1]:
            for tx in tiles[2]:
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), tz, ty, tx])))
                tile = rng.standard_normal((NOISE_TILE,) * 3, dtype=np.float32)
                lo = [max(t * NOISE_TILE, a) for t, a in zip((tz, ty, tx), start)]
                hi = [min((t + 1) * NOISE_TILE, b) for t, b in zip((tz, ty, tx), stop)]
                src = tuple(slice(lo_ - t * NOISE_TILE, hi_ - t * NOISE_TILE) for lo_, hi_, t in zip(lo, hi, (tz, ty, tx)))
                dst = tuple(slice(lo_ - a, hi_ - a) for lo_, hi_, a in zip(lo, hi, start))
                out[dst] = tile[src]
    return np.float32(mu) + np.float32(sigma) * out


@numba.njit(cache=True, nogil=True)
def _modify_retained(raw, factor, confidence, lo, hi, out):  # pragma: no cover
    one = np.float32(1.0)
    for i in range(raw.size):
        d = raw[i]
        c = confidence[i]
        v = (d * factor[i]) * c + d * (one - c)
        out[i] = lo if v < lo else (hi if v > hi else v)
    return out


@numba.njit(cache=True, nogil=True)
def _modify_excluded(raw, factor, confidence, lo, hi, out):  # pragma: no cover
    for i in range(raw.size):
        v = (raw[i] * factor[i]) * confidence[i]
        out[i] = lo if v < lo else (hi if v > hi else v)
    return out


@numba.njit(cache=True, nogil=True)
def _modify_with_noise(raw, factor, confidence, noise, exclude_solvent, lo, hi, out):  # pragma: no cover
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(raw.size):
        d = raw[i]
        f = factor[i]
        removed = one - f
        removed = zero if removed < zero else (one if removed > one else removed)
        m = d * f + noise[i] * removed
        c = confidence[i]
        v = m * c
        if not exclude_solvent:
            v = v + d * (one - c)
        out[i] = lo if v < lo else (hi if v > hi else v)
    return out


def modify_into(raw, factor, confidence, out, *, exclude_solvent: bool, value_range=None, noise=None) -> np.ndarray:
    """Section 8 voxel by voxel into ``out`` (float32): ``raw*factor`` (+ ``noise*clip(1-factor,
    0, 1)``), suppressed by the confidence, clipped to ``value_range`` when given. The same float32
    operations, in the same order, as :func:`suppress` on the whole arrays."""
    if not (out.flags.c_contiguous and out.dtype == np.float32 and out.shape == np.shape(raw)):
        raise ValueError("out must be a C-contiguous float32 array shaped like the block")
    arrays = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in (raw, factor, confidence)]
    noise = np.zeros(0, np.float32) if noise is None else np.ascontiguousarray(noise, dtype=np.float32).reshape(-1)
    lo, hi = (-np.inf, np.inf) if value_range is None else value_range
    lo, hi, flat = np.float32(lo), np.float32(hi), out.reshape(-1)
    # one straight loop per case, so that LLVM can vectorise it
    if noise.size:
        _modify_with_noise(*arrays, noise, bool(exclude_solvent), lo, hi, flat)
    elif exclude_solvent:
        _modify_excluded(*arrays, lo, hi, flat)
    else:
        _modify_retained(*arrays, lo, hi, flat)
    return out


def suppress(modified: np.ndarray, data: np.ndarray, confidence: np.ndarray, exclude_solvent: bool) -> np.ndarray:
    """Keep the modification only where content is confident: ``modified*C + data*(1-C)``, or
    ``modified*C`` when excluding solvent (solvent flattened to 0)."""
    out = modified * confidence
    if not exclude_solvent:
        out += data * (np.float32(1.0) - confidence)
    return out


SUBTRACTION_TABLE_SIZE = 1000  # entries of the OccuPy GUI's subtraction-mask table


def subtraction_table(kind: str, exponent: float = 0.0, power: float | None = None, pivot: float | None = None) -> np.ndarray:
    """The OccuPy GUI's subtraction-mask table on ``linspace(0, 1, 1000)`` (float32, in [0, 1]):
    the fraction of the density that an attenuation (``S**exponent``) or a sigmoid (``f(S)/S``
    below the pivot, 1 above it: nothing is amplified) keeps, per scale value."""
    n = SUBTRACTION_TABLE_SIZE
    x = np.linspace(0.0, 1.0, n).astype(np.float32)
    if kind == "attenuate":
        kept = x ** np.float32(exponent)
    elif kind == "sigmoid":
        kept = sigmoid_table_reference(power, pivot, n)
        n_pivot = int(n * pivot)
        kept[n_pivot:] = 1.0
        kept[0] = 0.0
        kept[1:n_pivot] = kept[1:n_pivot] / x[1:n_pivot]
    else:
        raise ValueError(f"no subtraction mask for a {kind} modification")
    return np.clip(kept, 0.0, 1.0).astype(np.float32)


def subtraction_mask(scale: np.ndarray, table: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The subtraction mask of a block: ``table[int(S * 999)]`` as the GUI indexes it (float32)."""
    index = (np.asarray(scale, dtype=np.float32) * np.float32(table.size - 1)).astype(np.int16)
    return np.take(table, index, out=out)
