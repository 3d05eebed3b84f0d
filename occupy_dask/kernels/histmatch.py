"""Histogram matching on numpy blocks (``--hist-match``): a modified map given the grey scale of
the input, as OccuPy's ``skimage.exposure.match_histograms`` does on the whole arrays.

A value's quantile in its map and the input's value at that quantile come from two histograms
over *every* float32 value: a bin is the top 20 bits of the value's bit pattern made
order-preserving, so bins are about 0.05% of the value wide at any magnitude and no range is
needed before counting. Within a bin values are taken as spread evenly (the cumulative
histogram is interpolated linearly), so the mapping is monotone and continuous, and the
counts of blocks simply add up. Exact zeros, the one value that recurs in bulk (excluded or
flattened solvent), are mapped as an exact match maps a repeated value: to the quantile at the top
of their count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

ORDER_SHIFT = 12  # low bits of the ordered pattern dropped: 2**20 bins over all float32 values
N_ORDER_BINS = 1 << (32 - ORDER_SHIFT)
_SIGN = np.uint32(0x80000000)
ZERO_BIN = 0x80000000 >> ORDER_SHIFT  # the bin of 0 (and of positive values below 6e-42)


def ordered_codes(values: np.ndarray) -> np.ndarray:
    """uint32 codes of float32 ``values`` that sort as the values do (negative values have
    their bits flipped, positive ones their sign bit set); -0 is coded as 0. The compiled
    passes (:func:`order_counts`, :meth:`HistogramMatch.apply`) code each value the same way."""
    u = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0 + 0 = +0
    return np.where(u & _SIGN, ~u, u | _SIGN)


def code_values(codes: np.ndarray) -> np.ndarray:
    """The float32 values of ordered ``codes`` (the inverse of :func:`ordered_codes`)."""
    codes = np.asarray(codes, dtype=np.uint32)
    return np.where(codes & _SIGN, codes & ~_SIGN, ~codes).view(np.float32)


def order_counts(block: np.ndarray) -> np.ndarray:
    """Counts of a block's values in the ``N_ORDER_BINS`` ordered bins (int64); blocks add up."""
    flat = np.ascontiguousarray(block, dtype=np.float32).reshape(-1)
    return _count(flat.view(np.uint32), np.zeros(N_ORDER_BINS, dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _ordered_bin(u):  # pragma: no cover
    sign = np.uint32(0x80000000)
    if u == sign:  # -0 is coded as +0
        u = np.uint32(0)
    code = ~u if u & sign else u | sign
    return code >> ORDER_SHIFT


@numba.njit(cache=True, nogil=True)
def _count(bits, counts):  # pragma: no cover
    for i in range(bits.size):
        counts[_ordered_bin(bits[i])] += 1
    return counts


def _bin_edges(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest float value (float64) of each ordered bin in ``bins``; the highest
    bins are closed at the largest finite float32."""
    codes = bins.astype(np.uint64) << ORDER_SHIFT
    lo = code_values(codes.astype(np.uint32)).astype(np.float64)
    top = np.minimum(codes + (1 << ORDER_SHIFT) - 1, 0xFF7FFFFF)  # the last code in the bin, finite
    hi = code_values(top.astype(np.uint32)).astype(np.float64)
    return lo, hi


@dataclass(frozen=True)
class HistogramMatch:
    """The monotone map of one map's values onto the input's grey scale: for each occupied
    ordered bin of the map (``bins``, sorted), the matched values at its lower and upper edge;
    values inside a bin are interpolated linearly."""

    bins: np.ndarray  # int64, the map's occupied ordered bins
    low: np.ndarray  # float64, matched value at each bin's lowest value
    high: np.ndarray  # float64, matched value at each bin's highest value

    @classmethod
    def between(cls, counts: np.ndarray, reference_counts: np.ndarray, reference_range: tuple[float, float] | None = None) -> HistogramMatch:
        """The match of a map with ordered-bin ``counts`` to a reference (the input) with
        ``reference_counts``: a value at quantile q of the map goes to the reference's value at q.
        ``reference_range`` (min, max), when known, closes the outermost bins at the reference's
        extremes, so no matched value lies outside them."""
        bins = np.flatnonzero(counts)
        if bins.size == 0 or not reference_counts.any():
            raise ValueError("histogram matching needs two non-empty histograms")
        cumulative = np.concatenate(([0], np.cumsum(counts[bins]))) / counts[bins].sum()  # one array: bin k ends where k+1 starts
        before, through = cumulative[:-1], cumulative[1:]
        low, high = (_quantile_values(q, reference_counts, reference_range) for q in (before, through))
        return cls(bins=bins, low=low, high=high)

    def apply(self, block: np.ndarray) -> np.ndarray:
        """The matched block (float32, same shape), in one pass over it."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        out = np.empty(block.shape, dtype=np.float32)
        low, span, lo_edge, inverse_width = self._tables
        flat = block.reshape(-1)
        if _apply(flat, flat.view(np.uint32), low, span, lo_edge, inverse_width, out.reshape(-1)):
            raise ValueError("a value outside the histogram this match was made from")
        return out

    @functools.cached_property
    def _tables(self):
        """Per ordered bin (all 2^20): the matched value at its lower edge, the matched span across
        it, its lower edge and 1 / its width (0 where the bin is a point: exact zeros, or a bin
        the map does not occupy, marked by a NaN lower value)."""
        low = np.full(N_ORDER_BINS, np.nan)
        span = np.zeros(N_ORDER_BINS)
        lo_edge = np.zeros(N_ORDER_BINS)
        inverse_width = np.zeros(N_ORDER_BINS)
        lo, hi = _bin_edges(self.bins)
        low[self.bins] = self.low
        span[self.bins] = self.high - self.low
        lo_edge[self.bins] = lo
        spread = (hi > lo) & (self.bins != ZERO_BIN)
        inverse_width[self.bins[spread]] = 1.0 / (hi[spread] - lo[spread])
        # exact zeros (solvent excluded, flattened regions) are one value, not a spread: like every
        # repeated value in an exact match, they take the quantile at the top of their count
        zero = self.bins == ZERO_BIN
        low[self.bins[zero]] = self.high[zero]
        span[self.bins[zero]] = 0.0
        return low, span, lo_edge, inverse_width


@numba.njit(cache=True, nogil=True)
def _apply(values, bits, low, span, lo_edge, inverse_width, out):  # pragma: no cover
    missing = 0
    for i in range(values.size):
        b = _ordered_bin(bits[i])
        if np.isnan(low[b]):
            missing += 1
            out[i] = np.float32(np.nan)
            continue
        frac = (np.float64(values[i]) - lo_edge[b]) * inverse_width[b]
        frac = 0.0 if frac < 0.0 else (1.0 if frac > 1.0 else frac)
        out[i] = np.float32(low[b] + frac * span[b])
    return missing


def _quantile_values(quantiles: np.ndarray, counts: np.ndarray, value_range=None) -> np.ndarray:
    """The values (float64) at ``quantiles`` of the distribution whose ordered-bin histogram is
    ``counts``, each bin's values spread evenly between its edges (the outermost bins closed at
    ``value_range`` when given)."""
    bins = np.flatnonzero(counts)
    cumulative = np.concatenate(([0], np.cumsum(counts[bins]))) / counts[bins].sum()
    before, through = cumulative[:-1], cumulative[1:]
    lo, hi = _bin_edges(bins)
    if value_range is not None:
        lo[0], hi[-1] = max(lo[0], value_range[0]), min(hi[-1], value_range[1])
        hi[0], lo[-1] = max(hi[0], lo[0]), min(lo[-1], hi[-1])
    at = np.minimum(np.searchsorted(through, quantiles, side="left"), bins.size - 1)
    frac = np.clip((quantiles - before[at]) / (through[at] - before[at]), 0.0, 1.0)
    return lo[at] + frac * (hi[at] - lo[at])
