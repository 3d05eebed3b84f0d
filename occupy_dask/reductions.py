"""Sections 3-4 of the method: the global reductions over the whole map.

Two passes, each one read of every block: the first takes the map's ranges and moments, the
moments of the solvent-region candidates, and each tile's quantile (the full-scale reference);
the second the histograms of the low-passed map and of the solvent region. When the low-passed
map's ranges are known beforehand the first pass takes the histograms too. Every result is an
exact reduction of per-block results, so it does not depend on the chunking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .blocks import Moments, block_grid, block_tasks, read_blocks, region, tile_reach
from .buffers import POOL
from .errors import ProcessingError, SolventModelError
from .kernels.histogram import histogram_counts, histogram_counts_inside, histogram_edges
from .kernels.local import ellipsoid_terms, inscribed_ellipsoid
from .kernels.sweep import block_moments
from .kernels.tiles import largest_tile_quantile, tile_layout, tile_moments
from .settings import Settings, tau_for_kernel
from .solvent import SOLVENT_ADVICE

SOLVENT_REGIONS = {
    "inside": "inscribed ellipsoid",
    "definition_high": "solvent definition > {threshold:g}",
    "definition_low": "solvent definition <= {threshold:g}",
}


@dataclass
class Reductions:
    """The global numbers of the map that the solvent model, the confidence and the local scale need."""

    raw: Moments  # the input map
    lp: Moments  # the low-passed map
    s_max: float  # the full-scale reference: the largest tile quantile at tau (with S0: tau x the largest value)
    best_tile: int  # the tile it comes from (id into ``tile_origins``)
    tile_origins: np.ndarray
    tile_index: np.ndarray  # each tile's grid index
    region_kind: str  # "inside" (the ellipsoid), or the ellipsoid where the solvent definition is above or at most its threshold
    region: Moments  # the low-passed map inside the solvent region
    lp_counts: np.ndarray  # histogram of the low-passed map over ``lp`` range
    region_counts: np.ndarray  # histogram of the solvent region over its range
    target: Moments | None = None  # the scale data inside the target mask
    target_tau: float | None = None
    target_s_max: float | None = None  # the full-scale reference at the target's tau
    tile_moments: list = field(default_factory=list)  # --debias: every tile's moments, per block

    def solvent_region_name(self, settings: Settings) -> str:
        return SOLVENT_REGIONS[self.region_kind].format(threshold=settings.solvent_def_threshold)


def global_reductions(sources: dict, s: Settings, run, lp_ranges=None) -> Reductions:
    """Both passes over the map ``sources`` (``raw``, ``lp``, ``scale`` and optional
    ``solvent_def``, ``target_mask``), with the checks that refuse a map the method cannot use.

    ``lp_ranges`` (min and max of the low-passed map, and of it inside the inscribed ellipsoid),
    when known from making the low-passed map, let the first pass take the histograms: one pass
    over the data instead of two (not with a solvent definition or target mask, whose regions
    depend on the first pass)."""
    grid = list(block_grid(s.shape, s.chunks))
    origins, tile_index = tile_layout(s.shape, s.tile_size, s.tile_grid)
    if len(origins) == 0:
        raise ProcessingError(f"no tile of {s.tile_size} voxels fits inside the box {s.shape}; use a smaller --tile-size")
    owned = tiles_of_blocks(grid, origins, s.chunks)
    histogram_ranges = _known_histogram_ranges(sources, lp_ranges)

    tasks = block_tasks(
        "occupy-first-pass",
        ((first_pass_block, (sources, s, start, stop, owned[index], origins[owned[index]], histogram_ranges)) for index, start, stop in grid),
    )
    totals, tiles, histograms, moments_of_tiles = _combine_first_pass(run(*tasks, label="reductions"))
    best, s_max = largest_tile(tiles)
    if s.s0:  # OccuPy's S0: tau times the largest scale-data value (float64, as the reference's)
        s_max = s.tau * float(totals["lp" if s.scale_mode == "occ" else "raw"].hi)
    check_map(totals, s_max, s)
    region_kind = "inside"
    if "inside" not in totals and not (totals["definition_high"].n and totals["definition_low"].n):
        raise ProcessingError(
            f"the solvent definition is {'above' if totals['definition_high'].n else 'at or below'} {s.solvent_def_threshold:g} "
            "everywhere inside the inscribed sphere, so it tells solvent from content nowhere; give a mask that is 1 on one "
            "and 0 on the other, or drop --solvent-def"
        )
    if "inside" not in totals:  # either polarity of the user's mask: solvent has the smaller variance
        high, low = totals["definition_high"], totals["definition_low"]
        region_kind = "definition_high" if high.variance < low.variance else "definition_low"
    solvent = totals[region_kind]
    if solvent.n < 2 or solvent.lo == solvent.hi:
        raise SolventModelError(f"the solvent region holds no variation ({solvent.n} voxels); {SOLVENT_ADVICE}")

    target, target_tau = None, None
    if "target_mask" in sources:
        target = totals.get("target", Moments())
        if target.n == 0:
            raise ProcessingError(f"the target mask selects no voxel (none above {s.target_threshold:g})")
        target_tau = tau_for_kernel(target.n)

    lp_range, region_range = (totals["lp"].lo, totals["lp"].hi), (solvent.lo, solvent.hi)
    if histogram_ranges is not None:
        if histogram_ranges != (lp_range, region_range):  # both from the same float32 values
            raise ProcessingError(f"internal error: low-pass ranges {histogram_ranges} disagree with the first pass")
        results = histograms
    else:
        calls = []
        for index, start, stop in grid:
            ids = owned[index]
            target_tiles = (ids, origins[ids], target_tau) if target_tau is not None else None
            calls.append((histogram_block, (sources, s, start, stop, lp_range, region_kind, region_range, target_tiles)))
        results = run(*block_tasks("occupy-histograms", calls), label="histograms")
    return Reductions(
        raw=totals["raw"],
        lp=totals["lp"],
        s_max=s_max,
        best_tile=best,
        tile_origins=origins,
        tile_index=tile_index,
        region_kind=region_kind,
        region=solvent,
        lp_counts=sum(r[0] for r in results),
        region_counts=sum(r[1] for r in results),
        target=target,
        target_tau=target_tau,
        target_s_max=largest_tile(r[2] for r in results)[1] if target_tau is not None else None,
        tile_moments=moments_of_tiles,
    )


def tiles_of_blocks(grid, origins: np.ndarray, chunks) -> dict:
    """The ids of the tiles whose origin lies in each block, keyed by block index."""
    blocks = origins // np.asarray(chunks)
    if len(blocks) == 0:
        return {index: np.zeros(0, dtype=np.int64) for index, _, _ in grid}
    flat = np.ravel_multi_index(blocks.T, blocks.max(axis=0) + 1)
    order = np.argsort(flat, kind="stable").astype(np.int64)  # by block, each block's tiles in id order
    starts = np.flatnonzero(np.diff(flat[order])) + 1
    firsts = blocks[order[np.concatenate(([0], starts))]]
    ids = dict(zip(map(tuple, firsts.tolist()), np.split(order, starts)))
    return {index: ids.get(tuple(index), np.zeros(0, dtype=np.int64)) for index, _, _ in grid}


def _known_histogram_ranges(sources, lp_ranges):
    """The histogram ranges the first pass can use, when the low-pass gave them (else None)."""
    if lp_ranges is None or "solvent_def" in sources or "target_mask" in sources:
        return None
    lo, hi, inside_lo, inside_hi = lp_ranges
    if np.all(np.isfinite(lp_ranges)) and lo < hi and inside_lo < inside_hi:
        return ((lo, hi), (inside_lo, inside_hi))
    return None


def _combine_first_pass(results):
    """Sum the first pass's per-block moments and counts; collect its per-block tiles and histograms."""
    totals, tiles, histograms, moments_of_tiles = {}, [], [], []
    collected = {"tiles": tiles, "histograms": histograms, "tile_moments": moments_of_tiles}
    for res in results:
        for key, value in res.items():
            if key in collected:
                collected[key].append(value)
            else:
                totals[key] = totals[key] + value if key in totals else value
    return totals, tiles, histograms, moments_of_tiles


def first_pass_block(sources, s: Settings, start, stop, tile_ids, tile_origins, histogram_ranges=None) -> dict:
    """One block's share of the first pass: moments of the raw and low-passed map, exact zeros and
    non-finite voxels, moments of the solvent-region candidates, the scale data inside the target
    mask, the block's best tile quantile (and every tile's moments with ``--debias``), and with
    ``histogram_ranges`` the second pass's histograms."""
    key = region(start, stop)
    with POOL.borrow() as take:
        extended, (scale, raw, lp) = read_blocks(sources, start, stop, tile_reach(stop, tile_origins, s.tile_size), ("scale", "raw", "lp"), take)
        terms = ellipsoid_terms(s.shape, start, stop)
        sums, counts, histograms = block_moments(raw, lp, terms, histogram_ranges)
        n_inside, zeros_inside, n_nan, n_inf = (int(c) for c in counts)
        out = {
            "raw": Moments.from_row(raw.size, sums[0]),
            "lp": Moments.from_row(lp.size, sums[1]),
            "flat": np.array([zeros_inside, n_inside]),
            "nonfinite": np.array([n_nan, n_inf]),
        }
        if "solvent_def" in sources:
            inside = inscribed_ellipsoid(s.shape, start, stop)
            solvent = sources["solvent_def"][key] > s.solvent_def_threshold
            out["definition_high"] = Moments.of(lp[solvent & inside])
            out["definition_low"] = Moments.of(lp[~solvent & inside])
        else:
            out["inside"] = Moments.from_row(n_inside, sums[2])
        if "target_mask" in sources:
            out["target"] = Moments.of(scale[sources["target_mask"][key] > s.target_threshold])
        if histograms is not None:
            out["histograms"] = histograms
        if len(tile_ids):
            out["tiles"] = _best_tile(tile_ids, largest_tile_quantile(extended, start, tile_origins, s.tile_size, s.tau))
            if s.debias:  # the signal texture of the noise-floor model
                out["tile_moments"] = (tile_ids, tile_moments(extended, start, tile_origins, s.tile_size))
    return out


def histogram_block(sources, s: Settings, start, stop, lp_range, region_kind, region_range, target_tiles=None):
    """One block's histograms of the whole low-passed map and of the solvent region and, with a
    target mask (``target_tiles``: tile ids, origins, tau), the block's best tile at the mask's
    tau (the full-scale reference again)."""
    target_quantiles = None
    with POOL.borrow() as take:
        if target_tiles is not None and len(target_tiles[0]):
            tile_ids, tile_origins, tau = target_tiles
            extended, (lp,) = read_blocks(sources, start, stop, tile_reach(stop, tile_origins, s.tile_size), ("lp",), take)
            target_quantiles = _best_tile(tile_ids, largest_tile_quantile(extended, start, tile_origins, s.tile_size, tau))
        else:
            _, (lp,) = read_blocks(sources, start, stop, None, ("lp",), take)
        if region_kind == "inside":
            counts, region_counts = histogram_counts_inside(lp, ellipsoid_terms(s.shape, start, stop), lp_range, region_range)
        else:
            counts = histogram_counts(lp, *lp_range)
            solvent = sources["solvent_def"][region(start, stop)] > s.solvent_def_threshold
            mask = (solvent if region_kind == "definition_high" else ~solvent) & inscribed_ellipsoid(s.shape, start, stop)
            region_counts = histogram_counts(lp[mask], *region_range)
    return counts, region_counts, target_quantiles


def _best_tile(tile_ids, found) -> tuple[int, float]:
    row, value = found
    return int(tile_ids[row]), value


def largest_tile(found) -> tuple[int, float]:
    """The (tile id, value) with the largest value, the lowest id on ties (as ``np.argmax``)."""
    found = [f for f in found if f is not None]
    if any(np.isnan(v) for _, v in found):
        return next((t, v) for t, v in found if np.isnan(v))
    value = max(v for _, v in found)
    return min(t for t, v in found if v == value), value


# --------------------------------------------------------------------------- maps the method refuses


def check_map(totals: dict, s_max: float, s: Settings) -> None:
    """Refuse a map with NaN or infinite voxels, a constant map, one without positive density in
    the tiles, a solvent-flattened or masked map, and one that is noise alone."""
    n_nan, n_inf = (int(v) for v in totals["nonfinite"])
    if n_nan or n_inf:
        raise ProcessingError(
            f"the map has {n_nan} NaN and {n_inf} infinite voxels (of {math.prod(s.shape)}); "
            "use --allow-nonfinite to replace them with the median of the finite voxels"
        )
    raw = totals["raw"]
    if not np.isfinite(raw.lo) or not np.isfinite(raw.hi) or raw.lo == raw.hi:
        raise ProcessingError(f"the map is constant ({raw.lo:.6g} everywhere): there is no scale to estimate")
    if not s_max > 0:
        raise ProcessingError(f"the full-scale reference is {s_max:.4g} (no positive density in the central tiles); is the map inverted or empty?")
    zeros, n_inside = totals["flat"]
    if n_inside and zeros / n_inside > s.flattened_fraction:
        raise SolventModelError(
            f"the map looks solvent-flattened or masked: {100 * zeros / n_inside:.0f}% of the voxels inside the "
            "inscribed sphere are exactly 0, so there is no solvent noise to model; use the unmasked, "
            "unflattened map from refinement (e.g. the average of the half maps)"
        )
    if s.lowpass_applied:
        refuse_pure_noise(raw, totals["lp"], s)


def white_noise_power_fraction(settings: Settings) -> float:
    """Fraction of white noise's power that the low-pass keeps: the volume of the sphere
    ``|k| <= 1/lowpass`` over that of the sampled frequency box (product of ``1/voxel``)."""
    return min(1.0, 4.0 / 3.0 * math.pi * math.prod(settings.voxel_size) / settings.lowpass_angstrom**3)


def refuse_pure_noise(raw: Moments, lp: Moments, s: Settings) -> None:
    """Refuse a map whose low-pass keeps no more power than it would of white noise: maps with
    content keep several times that (their power is at low frequency)."""
    expected = white_noise_power_fraction(s)
    if raw.variance > 0 and lp.variance < s.noise_power_ratio * expected * raw.variance:
        raise SolventModelError(
            f"the map looks like pure noise: its {s.lowpass_angstrom:.3g} Å low-pass keeps {lp.variance / raw.variance:.3%} of its power, "
            f"as white noise would ({expected:.3%}; maps with content keep several times more), so nothing stands out from "
            "the solvent to model or scale; check the input, or give --solvent-def <mask.mrc> or a stronger --lowpass"
        )


# --------------------------------------------------------------------------- --allow-nonfinite


def finite_median(source, shape, chunks, run) -> tuple[float, int]:
    """Exact median of the finite voxels of ``source`` (numpy's definition) and the number of
    non-finite voxels, in three reads of the map: range and counts, a histogram to find the
    bins that hold the middle ranks, then the values inside those bins."""
    grid = list(block_grid(shape, chunks))
    stats = run(*block_tasks("occupy-finite", ((_finite_stats, (source, a, b)) for _, a, b in grid)), label="non-finite")
    n = sum(st[0] for st in stats)
    bad = sum(st[1] for st in stats)
    if n == 0:
        raise ProcessingError("the map has no finite voxel")
    lo, hi = min(st[2] for st in stats), max(st[3] for st in stats)
    if bad == 0 or lo == hi:
        return lo, bad
    counts = sum(run(*block_tasks("occupy-finite-counts", ((_finite_counts, (source, a, b, lo, hi)) for _, a, b in grid))))
    edges = histogram_edges(lo, hi)
    ranks = sorted({(n - 1) // 2, n // 2})
    cumulative = np.cumsum(counts)
    bins = [int(np.searchsorted(cumulative, r, side="right")) for r in ranks]
    b_lo, b_hi = edges[min(bins)], edges[max(bins) + 1]
    inside = np.concatenate(run(*block_tasks("occupy-finite-middle", ((_values_in, (source, a, b, b_lo, b_hi)) for _, a, b in grid))))
    inside = np.sort(inside[(inside >= b_lo) & ((inside < b_hi) | (max(bins) == len(counts) - 1))])
    before = int(cumulative[min(bins) - 1]) if min(bins) > 0 else 0
    middle = [float(inside[r - before]) for r in ranks]
    return float(np.mean(np.array(middle, dtype=np.float64)).astype(np.float32)), bad


def _finite_stats(source, start, stop):
    block = source[region(start, stop)]
    finite = block[np.isfinite(block)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.inf, -np.inf)
    return finite.size, block.size - finite.size, lo, hi


def _finite_counts(source, start, stop, lo, hi):
    return histogram_counts(source[region(start, stop)], lo, hi)  # NaN and Inf fall outside [lo, hi]


def _values_in(source, start, stop, lo, hi):
    block = source[region(start, stop)]
    return block[(block >= lo) & (block <= hi)]
