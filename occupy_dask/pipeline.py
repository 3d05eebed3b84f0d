"""The lazy graph of the method: global reductions first, then one fused pass per chunk.

Pass 1 (one read of each block): map ranges, solvent-region statistics, tile quantiles.
Pass 2 (one read): the whole-map and solvent-region histograms.
Fused pass (one read of each block and its halo): max filter, scale, confidence, modification.
Every per-block task reads its own data from a source, so results do not depend on chunking.
"""

from __future__ import annotations

import itertools
import math
import operator
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from . import lowpass as lowpass_stage
from .buffers import POOL
from .debias import NoiseFloor, noise_floor_model, top_tiles
from .io.read import ArraySource, FiniteSource, MapInfo, ZarrSource, read_block, read_with_halo
from .io.write import ChunkFileTarget
from .kernels.ballmax import ball_max_valid, ring_shape
from .kernels.histogram import (
    N_BINS,
    confidence_lookup,
    confidence_lookup_reference,
    density_from_counts,
    histogram_counts,
    histogram_counts_inside,
    histogram_edges,
)
from .kernels.local import (
    block_moments,
    debiased_scale,
    ellipsoid_terms,
    inscribed_ellipsoid,
    local_scale,
    masked_sum,
    moments,
    recalibrate_noise_level,
)
from .kernels.modify import modify_into, power_factor, sigmoid_factor, synthetic_solvent
from .kernels.tiles import largest_tile_quantile, tile_layout, tile_moments
from .settings import Modification, Settings, tau_for_kernel
from .solvent import (
    SOLVENT_ADVICE,
    ConfidenceTable,
    SolventModel,
    SolventModelError,
    confidence_table,
    content_one_percent,
    fit_solvent_model,
    solvent_edge,
)

SOLVENT_THRESHOLD = 0.9
TARGET_THRESHOLD = 0.5
IN_MEMORY_LOWPASS_BYTES = 2 << 30
FLATTENED_FRACTION = 0.2  # exact zeros inside the inscribed sphere that mean 'no solvent noise'
# A low-pass keeps this fraction of white noise's power: the share of Fourier space inside the
# cutoff sphere. Maps with content keep several times that (their power is at low frequency);
# below NOISE_POWER_RATIO times it, the map is noise alone.
NOISE_POWER_RATIO = 1.5


class ProcessingError(RuntimeError):
    """The method cannot go on with this map; the message says why in one line."""


def block_grid(shape, chunks):
    """``(index, start, stop)`` of every chunk of ``shape``, in C order."""
    axes = [list(range(0, n, c)) for n, c in zip(shape, chunks)]
    for index in itertools.product(*[range(len(a)) for a in axes]):
        start = tuple(axes[d][index[d]] for d in range(3))
        stop = tuple(min(s + c, n) for s, c, n in zip(start, chunks, shape))
        yield index, start, stop


def _region(start, stop):
    return tuple(slice(a, b) for a, b in zip(start, stop))


# --------------------------------------------------------------------------- pass 1


@dataclass(frozen=True)
class _Sums:
    """Running count, sum, sum of squares, min and max of a set of voxels."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf

    @classmethod
    def of(cls, values: np.ndarray) -> _Sums:
        if values.size == 0:
            return cls()
        total, squares, lo, hi = moments(np.ascontiguousarray(values).ravel())
        return cls(int(values.size), total, squares, lo, hi)

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(
            self.n + other.n,
            self.total + other.total,
            self.squares + other.squares,
            min(self.lo, other.lo),
            max(self.hi, other.hi),
        )

    @property
    def variance(self) -> float:
        if self.n < 2:
            return np.inf
        mean = self.total / self.n
        return max(self.squares / self.n - mean * mean, 0.0)


def _sums_row(n: int, row: np.ndarray) -> _Sums:
    return _Sums(n, float(row[0]), float(row[1]), float(row[2]), float(row[3])) if n else _Sums()


def _pass_one(sources, shape, start, stop, tile_ids, tile_origins, tile_size, tau, histogram_ranges=None, texture=False):
    region = _region(start, stop)
    with POOL.borrow() as take:
        extended, (scale, raw, lp) = _read_blocks(sources, start, stop, _tile_reach(stop, tile_origins, tile_size), ("scale", "raw", "lp"), take)
        terms = ellipsoid_terms(shape, start, stop)
        sums, counts = block_moments(raw, lp, terms)
        n_inside, zeros_inside, n_nan, n_inf = (int(c) for c in counts)
        out = {
            "raw": _sums_row(raw.size, sums[0]),
            "lp": _sums_row(lp.size, sums[1]),
            "flat": np.array([zeros_inside, n_inside]),
            "nonfinite": np.array([n_nan, n_inf]),
        }
        if "solvent_def" in sources:
            inside = inscribed_ellipsoid(shape, start, stop)
            solvent = sources["solvent_def"][region] > SOLVENT_THRESHOLD
            out["R"] = _Sums.of(lp[solvent & inside])
            out["R'"] = _Sums.of(lp[~solvent & inside])
        else:
            out["inside"] = _sums_row(n_inside, sums[2])
        if "target_mask" in sources:
            out["target"] = _Sums.of(scale[sources["target_mask"][region] > TARGET_THRESHOLD])
        if histogram_ranges is not None:  # ranges known beforehand: pass two's histograms here
            out["histograms"] = histogram_counts_inside(lp, terms, *histogram_ranges)
        if len(tile_ids):
            out["tiles"] = _best_tile(tile_ids, largest_tile_quantile(extended, start, tile_origins, tile_size, tau))
            if texture:  # --debias: every tile's moments, for the signal texture of the noise-floor model
                out["tile_moments"] = (tile_ids, tile_moments(extended, start, tile_origins, tile_size))
    return out


def _read_blocks(sources, start, stop, reach, names, take):
    """The scale data from ``start`` to ``reach`` (read once, with the planes, rows and columns
    its tiles reach beyond the block; None: not needed) and the blocks ``[start, stop)`` of the
    sources ``names``, each source read at most once."""
    extended, seen = None, []
    if reach is not None:
        extended = _block(sources["scale"], _region(start, reach), take)
        seen.append((sources["scale"], extended[tuple(slice(0, b - a) for a, b in zip(start, stop))]))
    blocks = []
    for name in names:
        block = next((b for source, b in seen if source is sources[name]), None)
        if block is None:
            block = _block(sources[name], _region(start, stop), take)
            seen.append((sources[name], block))
        blocks.append(block)
    return extended, blocks


def _tile_reach(stop, tile_origins, tile_size):
    """The far corner of a block extended to hold every tile whose origin lies in it."""
    if len(tile_origins) == 0:
        return tuple(stop)
    return tuple(int(v) for v in np.maximum(np.asarray(stop), tile_origins.max(axis=0) + tile_size))


def _best_tile(tile_ids, found) -> tuple[int, float]:
    row, value = found
    return int(tile_ids[row]), value


def _largest(found) -> tuple[int, float]:
    """The (tile id, value) with the largest value, the lowest id on ties (as ``np.argmax``)."""
    found = [f for f in found if f is not None]
    if any(np.isnan(v) for _, v in found):
        return next((t, v) for t, v in found if np.isnan(v))
    value = max(v for _, v in found)
    return min(t for t, v in found if v == value), value


def _pass_two(sources, shape, start, stop, lp_range, region_kind, region_range, target_tiles=None):
    """Histograms of the whole low-passed map and of the solvent region and, with a target mask,
    the block's best tile at the mask's tau (the full-scale reference again)."""
    region = _region(start, stop)
    target_quantiles = None
    with POOL.borrow() as take:
        if target_tiles is not None and len(target_tiles[0]):
            tile_ids, tile_origins, tile_size, tau = target_tiles
            extended, (lp,) = _read_blocks(sources, start, stop, _tile_reach(stop, tile_origins, tile_size), ("lp",), take)
            target_quantiles = _best_tile(tile_ids, largest_tile_quantile(extended, start, tile_origins, tile_size, tau))
        else:
            _, (lp,) = _read_blocks(sources, start, stop, None, ("lp",), take)
        if region_kind == "inside":
            counts, region_counts = histogram_counts_inside(lp, ellipsoid_terms(shape, start, stop), lp_range, region_range)
        else:
            counts = histogram_counts(lp, *lp_range)
            solvent = sources["solvent_def"][region] > SOLVENT_THRESHOLD
            mask = (solvent if region_kind == "R" else ~solvent) & inscribed_ellipsoid(shape, start, stop)
            region_counts = histogram_counts(lp[mask], *region_range)
    return counts, region_counts, target_quantiles


# --------------------------------------------------------------------------- fused pass


@dataclass(frozen=True)
class LocalPlan:
    """The numbers every chunk of the fused pass needs (small, picklable)."""

    shape: tuple[int, int, int]
    kernel: np.ndarray
    s_max: float
    table: np.ndarray
    edges: np.ndarray
    lp_min: float
    lp_max: float
    reference: bool
    nlrc_limit: float | None
    outputs: tuple[str, ...]
    noise_floor: NoiseFloor | None = None  # --debias: the scale is measured above it
    modifications: tuple[Modification, ...] = ()
    scale_limit: float = 0.05
    exclude_solvent: bool = False
    raw_range: tuple[float, float] | None = None  # clip modified maps to it (None: a later stage clips)
    solvent_mu: float = 0.0
    solvent_sigma: float = 0.0
    seed: int = 0


def modified_name(i: int) -> str:
    return f"modified_{i}"


def factor_name(i: int) -> str:
    return f"factor_{i}"


def modification_factor(mod: Modification, scale: np.ndarray, scale_limit: float, reference: bool, out: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel factor (float32) that modification ``mod`` multiplies the map by, given the
    scale: ``S_t**exponent``, the sigmoid's ``f(S)/S``, or 1 for solvent exclusion alone."""
    if out is None:
        out = np.empty(np.shape(scale), dtype=np.float32)
    if mod.kind == "sigmoid":
        out[...] = sigmoid_factor(scale, mod.power, mod.pivot, reference)
    elif mod.kind == "exclude":
        out[...] = 1.0
    else:
        power_factor(scale, mod.exponent, scale_limit, out=out)
    return out


def local_outputs(plan: LocalPlan, scale_padded, lp_block, raw_block, start, stop, out=None, take=None) -> dict[str, np.ndarray]:
    """All per-voxel results of one chunk ``[start, stop)`` from its scale data (with halo),
    low-passed and raw data: scale, confidence, and each modification's map and factor.

    Each result asked for in ``plan.outputs`` is written into its slot of ``out`` (an
    ``(n_outputs, *block)`` float32 array, allocated when not given); ``take(shape)``, when
    given, lends the scratch arrays (intermediates not asked for, the max filter's buffer), so
    that a chunk touches as little fresh memory as it can.
    """
    shape = tuple(b - a for a, b in zip(start, stop))
    take = take or (lambda shape: np.empty(shape, dtype=np.float32))
    if out is None:
        out = np.empty((len(plan.outputs), *shape), dtype=np.float32)
    slots = {name: out[i] for i, name in enumerate(plan.outputs)}

    def slot(name):  # an output's slot, or a scratch block for an intermediate not asked for
        if name not in slots:
            slots[name] = take(shape)
        return slots[name]

    scale = slot("scale")
    ball_max_valid(scale_padded, plan.kernel, out=scale, scratch=take(ring_shape(scale_padded.shape, plan.kernel)))
    if plan.noise_floor is not None:
        debiased_scale(scale, plan.noise_floor, out=scale)
    else:
        local_scale(scale, plan.s_max, out=scale)
    if plan.nlrc_limit is not None:
        recalibrate_noise_level(scale, plan.nlrc_limit, out=scale)
    confidence = slot("confidence")
    if plan.reference:
        confidence_lookup_reference(lp_block, plan.table, plan.lp_min, plan.lp_max, out=confidence)
    else:
        confidence_lookup(lp_block, plan.table, plan.edges, out=confidence)
    if "lowpass" in plan.outputs:
        slots["lowpass"][...] = lp_block
    raw_block = np.asarray(raw_block, dtype=np.float32)
    for i, mod in enumerate(plan.modifications):
        if modified_name(i) not in plan.outputs and factor_name(i) not in plan.outputs:
            continue
        factor = modification_factor(mod, scale, plan.scale_limit, plan.reference, out=slot(factor_name(i)))
        noise = None
        if mod.kind == "attenuate" and not plan.exclude_solvent:
            noise = synthetic_solvent(start, stop, plan.seed, plan.solvent_mu, plan.solvent_sigma)
        modify_into(
            raw_block,
            factor,
            confidence,
            slot(modified_name(i)),
            exclude_solvent=plan.exclude_solvent,
            value_range=plan.raw_range,
            noise=noise,
        )
    return slots


def _block(source, region, take) -> np.ndarray:
    """A block of a source: a view of an in-memory map, else read into a lent buffer."""
    if isinstance(source, ArraySource):
        return source.array[region]
    return read_block(source, region, take(tuple(r.stop - r.start for r in region)))


def _fused_task(plan: LocalPlan, sources, start, stop, targets=None):
    """One chunk's outputs and statistics. With ``targets`` (one writable region target per
    output, or None to skip it) the outputs are written here from lent buffers and only the
    statistics are returned; otherwise ``(stacked outputs, statistics)``."""
    halo = tuple(k // 2 for k in plan.kernel.shape)
    shape = tuple(b - a for a, b in zip(start, stop))
    region = _region(start, stop)
    with POOL.borrow() as take:
        scale_padded = read_with_halo(sources["scale"], start, stop, halo, out=take(tuple(n + 2 * h for n, h in zip(shape, halo))))
        lp_block = _block(sources["lp"], region, take)
        raw_block = _block(sources["raw"], region, take)
        stacked = take((len(plan.outputs), *shape)) if targets is not None else np.empty((len(plan.outputs), *shape), dtype=np.float32)
        results = local_outputs(plan, scale_padded, lp_block, raw_block, start, stop, out=stacked, take=take)
        core = tuple(slice(h, h + n) for h, n in zip(halo, shape))
        stats = {"variability": masked_sum(results["scale"], scale_padded[core], 1.0)}
        for name in plan.outputs:
            stats[name] = _Sums.of(results[name])
        if targets is None:
            return stacked, stats
        for name, target in zip(plan.outputs, targets):
            if target is not None:
                target[region] = results[name]
    return stats


def store_outputs(est: Estimate, targets: dict) -> Delayed:
    """A lazy list of per-chunk statistics whose computation writes the outputs named in
    ``targets`` (name -> region-writable target, e.g. an MRC or zarr target) chunk by chunk,
    each from the fused task that makes it: no chunk result waits in memory for a store task."""
    plan, chunks = est.plan, est.settings.chunks
    per_output = tuple(targets.get(name) for name in plan.outputs)
    token = dask.base.tokenize(plan.shape, chunks, plan.s_max, plan.outputs, uuid.uuid4().hex)
    name, gather = f"occupy-fused-store-{token}", f"occupy-gather-{token}"
    layer = {(name, *index): (_fused_task, plan, est.sources, start, stop, per_output) for index, start, stop in block_grid(plan.shape, chunks)}
    layer[gather] = (list, list(layer))
    return Delayed(gather, HighLevelGraph.from_collections(gather, layer, dependencies=()))


def _fused_graph(plan: LocalPlan, sources, chunks):
    """Lazy stacked outputs ``(n_outputs, *shape)`` and a lazy list of per-chunk statistics;
    each chunk's fused task runs once however many of its outputs are used."""
    token = dask.base.tokenize(plan.shape, chunks, plan.s_max, plan.outputs, uuid.uuid4().hex)
    fused, out, stats, gather = (f"occupy-{kind}-{token}" for kind in ("fused", "out", "stats", "gather"))
    fused_layer, array_layer, stats_layer = {}, {}, {}
    for index, start, stop in block_grid(plan.shape, chunks):
        fused_layer[(fused, *index)] = (_fused_task, plan, sources, start, stop)
        for c in range(len(plan.outputs)):
            array_layer[(out, c, *index)] = (_take_output, (fused, *index), c)
        stats_layer[(stats, *index)] = (operator.getitem, (fused, *index), 1)
    graph = HighLevelGraph(
        {
            fused: fused_layer,
            out: array_layer,
            stats: stats_layer,
            gather: {gather: (list, list(stats_layer))},
        },
        {fused: set(), out: {fused}, stats: {fused}, gather: {stats}},
    )
    dim_chunks = tuple(tuple(min(c, n - s) for s in range(0, n, c)) for n, c in zip(plan.shape, chunks))
    stacked = da.Array(graph, out, ((1,) * len(plan.outputs), *dim_chunks), dtype=np.float32)
    return stacked, Delayed(gather, graph)


def _lowpass_output(array: da.Array, s: Settings, raw_range) -> da.Array:
    """``--lowpass-amplified``: low-pass a modified map (pencil FFT as the input's) and clip it
    to the input's range."""
    filtered = lowpass_stage.lowpass(array, s.voxel_size, s.lowpass_output_angstrom, reference=s.reference_compatible)
    lo, hi = np.float32(raw_range[0]), np.float32(raw_range[1])
    return filtered.rechunk(s.chunks, method="tasks").map_blocks(np.clip, lo, hi, dtype=np.float32)


def modify_lazy(est: Estimate, mod: Modification, *, exclude_solvent: bool, scale_limit: float, lowpass_output: float | None, seed: int) -> da.Array:
    """One more modification of an estimated map, as a lazy array (its own fused pass)."""
    s = replace(
        est.settings,
        modifications=(mod,),
        exclude_solvent=exclude_solvent,
        scale_limit=scale_limit,
        lowpass_output_angstrom=lowpass_output,
        seed=seed,
    )
    plan = replace(
        est.plan,
        outputs=(modified_name(0),),
        modifications=(mod,),
        exclude_solvent=exclude_solvent,
        scale_limit=scale_limit,
        raw_range=None if lowpass_output else est.raw_range,
        seed=seed,
    )
    stacked, _ = _fused_graph(plan, est.sources, s.chunks)
    return _lowpass_output(stacked[0], s, est.raw_range) if lowpass_output else stacked[0]


def _take_output(result, channel):
    return result[0][channel : channel + 1]


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class TargetOccupancy:
    """Section 9: the occupancy of the region a target mask selects."""

    n_voxels: int
    tau: float  # tau for n_voxels samples
    value_max: float  # largest scale-data value inside the mask
    s_max: float  # the full-scale reference at that tau
    nlrc_limit: float | None = None
    noise_floor: NoiseFloor | None = None  # --debias: both measured above the noise floor

    @property
    def occupancy(self) -> float:
        if self.noise_floor is not None:
            return float(np.clip(self.noise_floor.signal(self.value_max) / self.noise_floor.signal(self.s_max), 0.0, 1.0))
        occ = self.value_max / self.s_max
        if self.nlrc_limit is not None:
            occ = float(np.clip((occ - self.nlrc_limit) / (1.0 - self.nlrc_limit), 0.0, 1.0))
        return occ


@dataclass
class Estimate:
    """Result of :func:`estimate`: global numbers computed, per-voxel maps lazy (dask arrays).

    Arrays are in stored axis order; ``scale`` and ``confidence`` are float32 in [0, 1].
    """

    settings: Settings
    info: MapInfo
    s_max: float
    best_tile: tuple[int, int, int]
    best_tile_centre: tuple[float, float, float]
    n_tiles: int
    solvent_model: SolventModel
    solvent_region: str
    solvent_edge: float
    content_1pct: float
    confidence: ConfidenceTable
    raw_range: tuple[float, float]
    lp_range: tuple[float, float]
    outputs: da.Array  # stacked (n_outputs, *shape)
    output_names: tuple[str, ...]
    block_stats: object  # lazy list of per-chunk statistics
    plan: LocalPlan | None = None
    sources: dict = field(default_factory=dict, repr=False)
    final: dict = field(default_factory=dict, repr=False)  # outputs replaced by a later stage (low-passed modified maps)
    target_occupancy: TargetOccupancy | None = None
    noise_floor: NoiseFloor | None = None  # --debias
    warnings: list[str] = field(default_factory=list)
    cleanup: list = field(default_factory=list, repr=False)  # callables run by close()

    def __getitem__(self, name: str) -> da.Array:
        if name in self.final:
            return self.final[name]
        return self.outputs[self.output_names.index(name)]

    def has_block_stats(self, name: str) -> bool:
        """Whether the fused pass's per-chunk statistics describe output ``name`` as written."""
        return name in self.output_names and name not in self.final

    def modified(self, i: int = 0) -> da.Array:
        """The ``i``-th modified map of ``settings.modifications`` (lazy, float32)."""
        return self[modified_name(i)]

    @property
    def scale(self) -> da.Array:
        return self["scale"]

    @property
    def confidence_map(self) -> da.Array:
        return self["confidence"]

    @property
    def confidence_limit(self) -> float:
        """Scale below which the solvent model gives content less than half the voxels."""
        return self.confidence.limit_value / self.s_max

    def close(self) -> None:
        """Remove temporary files and stores (a spilled low-passed map); lazy maps that read
        them cannot be computed afterwards."""
        while self.cleanup:
            self.cleanup.pop()()
        POOL.clear()  # the chunk buffers this process lent the passes (free ones only)

    def __enter__(self) -> Estimate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_float32_dask(source, chunks) -> da.Array:
    name = f"occupy-input-{uuid.uuid4().hex}"
    return da.from_array(source, chunks=chunks, name=name, lock=False, asarray=False, meta=np.empty((0, 0, 0), np.float32))


def _block_ranges(block: np.ndarray, shape, start) -> np.ndarray:
    """(min, max, min inside, max inside) of one block of the low-passed map."""
    stop = tuple(a + n for a, n in zip(start, block.shape))
    sums, counts = block_moments(block, block, ellipsoid_terms(shape, start, stop))
    return np.array([sums[1, 2], sums[1, 3], sums[2, 2], sums[2, 3]])


def _store_block(block: np.ndarray, target, shape, start) -> np.ndarray:
    target[_region(start, tuple(a + n for a, n in zip(start, block.shape)))] = block
    return _block_ranges(block, shape, start)


def _store_with_ranges(array: da.Array, target, run, label: str) -> tuple[float, float, float, float]:
    """Compute ``array`` block by block into ``target`` (a numpy array or a zarr array whose
    chunks the blocks cover) and return its ranges (see :func:`_block_ranges`), from the same
    tasks."""
    starts = [np.cumsum((0, *c[:-1])) for c in array.chunks]
    blocks = array.to_delayed(optimize_graph=False)
    tasks = [
        dask.delayed(_store_block, pure=False)(blocks[i, j, k], target, array.shape, (int(starts[0][i]), int(starts[1][j]), int(starts[2][k])))
        for i, j, k in np.ndindex(*blocks.shape)
    ]
    return _combined_ranges(run(*tasks, label=label))


def _combined_ranges(parts) -> tuple[float, float, float, float]:
    parts = np.array(parts)
    return (float(parts[:, 0].min()), float(parts[:, 1].max()), float(parts[:, 2].min()), float(parts[:, 3].max()))


def _materialise(array: da.Array, spill: bool, temp_dir: str | None, run, label: str, read_chunks=None):
    """Compute a lazy map into memory or, when ``spill``, into a temporary zarr store; returns
    the source, the temporary folder (or None) and the map's ranges (see :func:`_block_ranges`).

    The store is uncompressed (a scratch copy of noisy data) and chunked as the array's
    z-slabs cut along y and x like ``read_chunks`` (the later block reads), so a block read
    touches hardly more than its own data; every write covers whole zarr chunks."""
    if not spill:
        target = np.empty(array.shape, dtype=np.float32)
        return ArraySource(target), None, _store_with_ranges(array, target, run, label)
    import zarr

    folder = Path(tempfile.mkdtemp(prefix="occupy_dask_", dir=temp_dir)).absolute()
    path = folder / "lowpass.zarr"
    chunks = [c[0] for c in array.chunks]
    if read_chunks is not None:
        for axis in (1, 2):
            if len(array.chunks[axis]) == 1:  # blocks span the axis: any cut along it stays aligned
                chunks[axis] = min(read_chunks[axis], array.shape[axis])
    try:
        zarr.create_array(str(path), shape=array.shape, chunks=tuple(chunks), dtype="float32", fill_value=0.0, compressors=None)
        target = ChunkFileTarget(str(path), tuple(array.shape), tuple(chunks)).prepare()
        ranges = _store_with_ranges(array, target, run, label)
    except BaseException:  # an error or an interrupt while writing: the caller never learns of the folder
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ZarrSource(str(path), tuple(array.shape), scratch=True), folder, ranges


def _spill(array: da.Array, chunks, name: str, *, folder: Path, run) -> da.Array:
    """Compute ``array`` into an uncompressed zarr store in ``folder`` chunked ``chunks`` (every
    block of ``array`` covers whole store chunks) and return a lazy array reading it back."""
    import zarr

    path = str(folder / f"{name}.zarr")
    store = zarr.create_array(path, shape=array.shape, chunks=tuple(chunks), dtype=array.dtype, fill_value=0, compressors=None)
    run(da.store(array, store, lock=False, compute=False), label=f"low-pass ({name})")
    return da.from_zarr(path)


def _finite_stats(source, start, stop):
    block = source[_region(start, stop)]
    finite = block[np.isfinite(block)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.inf, -np.inf)
    return finite.size, block.size - finite.size, lo, hi


def _finite_counts(source, start, stop, lo, hi):
    return histogram_counts(source[_region(start, stop)], lo, hi)  # NaN and Inf fall outside [lo, hi]


def _values_in(source, start, stop, lo, hi):
    block = source[_region(start, stop)]
    return block[(block >= lo) & (block <= hi)]


def finite_median(source, shape, chunks, run) -> tuple[float, int]:
    """Exact median of the finite voxels of ``source`` (numpy's definition) and the number of
    non-finite voxels, in three reads of the map: range and counts, a histogram to find the
    bins that hold the middle ranks, then the values inside those bins."""
    grid = list(block_grid(shape, chunks))
    stats = run(*[dask.delayed(_finite_stats, pure=False)(source, a, b) for _, a, b in grid], label="non-finite")
    n = sum(st[0] for st in stats)
    bad = sum(st[1] for st in stats)
    if n == 0:
        raise ProcessingError("the map has no finite voxel")
    lo, hi = min(st[2] for st in stats), max(st[3] for st in stats)
    if bad == 0 or lo == hi:
        return lo, bad
    counts = sum(run(*[dask.delayed(_finite_counts, pure=False)(source, a, b, lo, hi) for _, a, b in grid]))
    edges = histogram_edges(lo, hi)
    ranks = sorted({(n - 1) // 2, n // 2})
    cumulative = np.cumsum(counts)
    bins = [int(np.searchsorted(cumulative, r, side="right")) for r in ranks]
    b_lo, b_hi = edges[min(bins)], edges[max(bins) + 1]
    inside = np.concatenate(run(*[dask.delayed(_values_in, pure=False)(source, a, b, b_lo, b_hi) for _, a, b in grid]))
    inside = np.sort(inside[(inside >= b_lo) & ((inside < b_hi) | (max(bins) == len(counts) - 1))])
    before = int(cumulative[min(bins) - 1]) if min(bins) > 0 else 0
    middle = [float(inside[r - before]) for r in ranks]
    return float(np.mean(np.array(middle, dtype=np.float64)).astype(np.float32)), bad


def white_noise_power_fraction(settings: Settings) -> float:
    """Fraction of white noise's power that the low-pass keeps: the volume of the sphere
    ``|k| <= 1/lowpass`` over that of the sampled frequency box (product of ``1/voxel``)."""
    return min(1.0, 4.0 / 3.0 * math.pi * math.prod(settings.voxel_size) / settings.lowpass_angstrom**3)


def _refuse_pure_noise(raw: _Sums, lp: _Sums, s: Settings) -> None:
    """Refuse a map whose low-pass keeps no more power than it would of white noise."""
    variance = [max(x.squares / x.n - (x.total / x.n) ** 2, 0.0) for x in (raw, lp)]
    expected = white_noise_power_fraction(s)
    if variance[0] > 0 and variance[1] < NOISE_POWER_RATIO * expected * variance[0]:
        raise SolventModelError(
            f"the map looks like pure noise: its {s.lowpass_angstrom:.3g} Å low-pass keeps {variance[1] / variance[0]:.3%} of its power, "
            f"as white noise would ({expected:.3%}; maps with content keep several times more), so nothing stands out from "
            "the solvent to model or scale; check the input, or give --solvent-def <mask.mrc> or a stronger --lowpass"
        )


def _noise_floor(s: Settings, model: SolventModel, table: ConfidenceTable, lp_counts, moments_of_tiles, s_max: float, value_max: float) -> NoiseFloor:
    """``--debias``: the noise-floor model of this map, from the solvent model, the voxels it
    calls solvent with confidence (content fraction 0) and the densest tiles."""
    solvent_voxels = int(np.asarray(lp_counts)[np.asarray(table.fraction) <= 0].sum())
    if solvent_voxels == 0:
        raise ProcessingError(
            "--debias needs confident solvent to measure the noise floor, and the solvent model calls no voxel solvent "
            f"with confidence (no histogram bin has content fraction 0); {SOLVENT_ADVICE}, or run without --debias"
        )
    ids = np.concatenate([m[0] for m in moments_of_tiles])
    sums = np.concatenate([m[1] for m in moments_of_tiles])
    means, variances = top_tiles(ids, sums, s.tile_size**3)
    floor = noise_floor_model(
        kernel=s.kernel,
        voxel_size=s.voxel_size,
        lowpass_angstrom=s.lowpass_angstrom,
        lowpass_applied=s.lowpass_applied,
        occupancy_mode=s.scale_mode == "occ",
        resolution_angstrom=s.resolution_angstrom,
        mu=model.mu,
        sigma_lowpass=model.sigma,
        tile_means=means,
        tile_variances=variances,
        s_max=s_max,
        value_max=value_max,
    )
    if not floor.signal_max > 0:
        raise ProcessingError(
            f"--debias: the full-scale reference s_max {s_max:.4g} does not rise above the noise floor {floor.floor:.4g} "
            f"(noise {floor.correlation}), so no scale can be measured above the noise; "
            "give --resolution (a band-limited map has less noise per voxel), try --occupancy, or run without --debias"
        )
    return floor


def _default_run(*objs, label: str = ""):
    return dask.compute(*objs)


def estimate(
    raw_source,
    info: MapInfo,
    settings: Settings,
    solvent_def_source=None,
    *,
    target_mask_source=None,
    run=_default_run,
    spill_lowpass: bool | None = None,
    temp_dir: str | None = None,
    extra_outputs: tuple[str, ...] = (),
    allow_nonfinite: bool = False,
) -> Estimate:
    """Run the global reductions and return the lazy per-voxel outputs (sections 3-7).

    ``raw_source`` is a source (``shape`` + ``__getitem__``) in stored order; ``run(*objs,
    label=...)`` computes dask objects (progress and scheduler are the caller's).
    """
    s = settings
    temp_dirs: list[Path] = []
    notes = []
    if allow_nonfinite:
        median, bad = finite_median(raw_source, s.shape, s.chunks, run)
        if bad:
            raw_source = FiniteSource(raw_source, median)
            notes.append(f"replaced {bad} NaN or infinite voxels with the median of the finite ones ({median:.6g})")
    sources = {"raw": raw_source}
    lp_ranges = None
    if s.lowpass_applied:
        spill_spectrum, fft_folder = None, None
        if lowpass_stage.spectrum_bytes(s.shape, s.voxel_size, s.lowpass_angstrom, s.reference_compatible) > IN_MEMORY_LOWPASS_BYTES:
            fft_folder = Path(tempfile.mkdtemp(prefix="occupy_dask_fft_", dir=temp_dir)).absolute()
            temp_dirs.append(fft_folder)
            spill_spectrum = partial(_spill, folder=fft_folder, run=run)
        lp_lazy = lowpass_stage.lowpass(
            _as_float32_dask(raw_source, lowpass_stage.input_chunks(s.shape)),
            s.voxel_size,
            s.lowpass_angstrom,
            reference=s.reference_compatible,
            slab_planes=s.chunks[0] if s.chunks[1:] == s.shape[1:] else None,  # slabs as the block reads
            spill=spill_spectrum,
        )
        if spill_lowpass is None:  # tasks in other processes cannot read this one's memory
            spill_lowpass = lp_lazy.nbytes > IN_MEMORY_LOWPASS_BYTES or getattr(run, "distributed", False)
        try:
            lp_source, folder, lp_ranges = _materialise(lp_lazy, spill_lowpass, temp_dir, run, "low-pass", read_chunks=s.chunks)
        finally:
            if fft_folder is not None:  # the spectra are not needed once the low-passed map exists
                shutil.rmtree(fft_folder, ignore_errors=True)
                temp_dirs.remove(fft_folder)
        if folder is not None:
            temp_dirs.append(folder)
        sources["lp"] = lp_source
    else:
        sources["lp"] = raw_source
    if solvent_def_source is not None:
        sources["solvent_def"] = solvent_def_source
    if target_mask_source is not None:
        sources["target_mask"] = target_mask_source
    sources["scale"] = sources["lp"] if s.scale_mode == "occ" else sources["raw"]

    try:
        est = _estimate_from_sources(sources, info, s, run, temp_dirs, extra_outputs, lp_ranges)
        est.warnings[:0] = notes
        return est
    except BaseException:
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _estimate_from_sources(sources, info, s: Settings, run, temp_dirs, extra_outputs, lp_ranges=None) -> Estimate:
    """The global reductions and the lazy fused pass. ``lp_ranges`` (min and max of the
    low-passed map, and of it inside the inscribed ellipsoid), when known from making the
    low-passed map, let the first pass also take the histograms: one pass over the data instead
    of two (without a solvent definition or target mask, whose regions depend on pass one)."""
    shape, chunks = s.shape, s.chunks
    grid = list(block_grid(shape, chunks))
    warnings: list[str] = []
    histogram_ranges = None
    if lp_ranges is not None and "solvent_def" not in sources and "target_mask" not in sources:
        lo, hi, inside_lo, inside_hi = lp_ranges
        if np.all(np.isfinite(lp_ranges)) and lo < hi and inside_lo < inside_hi:
            histogram_ranges = ((lo, hi), (inside_lo, inside_hi))

    # pass 1: ranges, solvent-region statistics, tile quantiles
    origins, tile_index = tile_layout(shape, s.tile_size, s.tile_grid)
    if len(origins) == 0:
        raise ProcessingError(f"no tile of {s.tile_size} voxels fits inside the box {shape}; use a smaller --tile-size")
    owner = {index: [] for index, _, _ in grid}
    block_of = np.stack([origins[:, d] // chunks[d] for d in range(3)], axis=1)
    for t, b in enumerate(map(tuple, block_of)):
        owner[b].append(t)
    tasks = []
    for index, start, stop in grid:
        ids = np.asarray(owner[index], dtype=np.int64)
        tasks.append(
            dask.delayed(_pass_one, pure=False)(sources, shape, start, stop, ids, origins[ids], s.tile_size, s.tau, histogram_ranges, s.debias)
        )
    results = run(*tasks, label="reductions")
    totals = {}
    tiles = []
    histograms = []
    moments_of_tiles = []
    for res in results:
        for key, value in res.items():
            if key == "tiles":
                tiles.append(value)
            elif key == "histograms":
                histograms.append(value)
            elif key == "tile_moments":
                moments_of_tiles.append(value)
            else:
                totals[key] = totals[key] + value if key in totals else value
    n_nan, n_inf = (int(v) for v in totals["nonfinite"])
    if n_nan or n_inf:
        raise ProcessingError(
            f"the map has {n_nan} NaN and {n_inf} infinite voxels (of {int(np.prod(shape))}); "
            "use --allow-nonfinite to replace them with the median of the finite voxels"
        )
    raw_range = (totals["raw"].lo, totals["raw"].hi)
    lp_range = (totals["lp"].lo, totals["lp"].hi)
    if not np.all(np.isfinite(raw_range)) or raw_range[0] == raw_range[1]:
        raise ProcessingError(f"the map is constant ({raw_range[0]:.6g} everywhere): there is no scale to estimate")
    best, s_max = _largest(tiles)
    if not s_max > 0:
        raise ProcessingError(f"the full-scale reference is {s_max:.4g} (no positive density in the central tiles); is the map inverted or empty?")

    zeros, n_inside = totals["flat"]
    if n_inside and zeros / n_inside > FLATTENED_FRACTION:
        raise SolventModelError(
            f"the map looks solvent-flattened or masked: {100 * zeros / n_inside:.0f}% of the voxels inside the "
            "inscribed sphere are exactly 0, so there is no solvent noise to model; use the unmasked, "
            "unflattened map from refinement (e.g. the average of the half maps)"
        )
    if s.lowpass_applied:
        _refuse_pure_noise(totals["raw"], totals["lp"], s)
    if "inside" in totals:
        region_kind = "inside"
    else:
        region_kind = "R" if totals["R"].variance < totals["R'"].variance else "R'"
    region = totals[region_kind]
    if region.n < 2 or region.lo == region.hi:
        raise SolventModelError(f"the solvent region holds no variation ({region.n} voxels); {SOLVENT_ADVICE}")

    target_tau = None
    if "target_mask" in sources:
        target = totals.get("target", _Sums())
        if target.n == 0:
            raise ProcessingError("the target mask selects no voxel (none above 0.5)")
        target_tau = tau_for_kernel(target.n)

    # pass 2: histograms of the whole low-passed map and of the solvent region (and, with a
    # target mask, the tile quantiles at its tau)
    if histogram_ranges is not None:
        if histogram_ranges != (lp_range, (region.lo, region.hi)):  # both from the same float32 values
            raise ProcessingError(f"internal error: low-pass ranges {histogram_ranges} disagree with the first pass")
        results = histograms
    else:
        tasks = []
        for index, start, stop in grid:
            ids = np.asarray(owner[index], dtype=np.int64)
            target_tiles = (ids, origins[ids], s.tile_size, target_tau) if target_tau is not None else None
            tasks.append(
                dask.delayed(_pass_two, pure=False)(sources, shape, start, stop, lp_range, region_kind, (region.lo, region.hi), target_tiles)
            )
        results = run(*tasks, label="histograms")
    lp_counts = sum(r[0] for r in results)
    region_counts = sum(r[1] for r in results)
    lp_edges = histogram_edges(*lp_range)
    region_edges = histogram_edges(region.lo, region.hi)
    lp_density = density_from_counts(lp_counts, lp_edges)
    region_density = density_from_counts(region_counts, region_edges)

    # solvent model and confidence table
    if s.reference_compatible:
        fit_x = np.linspace(float(np.float32(region.lo)), float(np.float32(region.hi)), N_BINS)
    else:
        fit_x = region_edges[:-1].astype(np.float64)
    model = fit_solvent_model(fit_x, region_density, region_edges)
    table = confidence_table(model, lp_density, lp_edges, s.hedge_confidence, reference=s.reference_compatible)
    edge = solvent_edge(model, region_edges)
    content = content_one_percent(model, region_edges)
    if table.suspicious:
        warnings.append(
            f"potentially bad solvent model: {table.n_unconfident} of {N_BINS} histogram bins are "
            f"mostly solvent (lowest confident scale {table.limit_value / s_max:.2f}); check --plot and "
            "consider --solvent-def <mask.mrc> or a stronger --lowpass"
        )
    noise_floor = None
    if s.debias:
        noise_floor = _noise_floor(s, model, table, lp_counts, moments_of_tiles, s_max, totals["raw" if s.scale_mode == "res" else "lp"].hi)
        if table.suspicious:
            warnings.append("the noise floor of --debias comes from that solvent model and is unreliable too")
    if np.count_nonzero(table.fraction > 0) == 0:
        warnings.append(
            f"the solvent model leaves no voxel with confident content (confidence is 0 everywhere; the scale is unaffected); {SOLVENT_ADVICE}"
        )

    nlrc_limit = (table.limit_value / s_max) if s.nlrc else None
    target_occupancy = None
    if target_tau is not None:
        target_occupancy = TargetOccupancy(
            n_voxels=target.n,
            tau=target_tau,
            value_max=target.hi,
            s_max=_largest(r[2] for r in results)[1],
            nlrc_limit=nlrc_limit,
            noise_floor=noise_floor,
        )

    outputs = ["scale", "confidence", *[n for n in extra_outputs if n != "factor"]]
    for i, mod in enumerate(s.modifications):
        outputs.append(modified_name(i))
        if "factor" in extra_outputs and mod.kind != "exclude":
            outputs.append(factor_name(i))
        if mod.kind != "exclude" and mod.amount < -1:
            warnings.append(f"amplify amount {mod.amount:g} is below -1 (attenuation beyond the scale itself); this is untested")
    outputs = tuple(outputs)
    plan = LocalPlan(
        shape=shape,
        kernel=s.kernel,
        s_max=s_max,
        table=table.fraction.astype(np.float32),
        edges=lp_edges,
        lp_min=lp_range[0],
        lp_max=lp_range[1],
        reference=s.reference_compatible,
        nlrc_limit=nlrc_limit,
        outputs=outputs,
        noise_floor=noise_floor,
        modifications=s.modifications,
        scale_limit=s.scale_limit,
        exclude_solvent=s.exclude_solvent,
        raw_range=None if s.lowpass_output_angstrom else raw_range,
        solvent_mu=model.mu,
        solvent_sigma=model.sigma,
        seed=s.seed,
    )
    stacked, stats = _fused_graph(plan, sources, chunks)
    final = {
        modified_name(i): _lowpass_output(stacked[outputs.index(modified_name(i))], s, raw_range)
        for i in range(len(s.modifications))
        if s.lowpass_output_angstrom
    }
    tile = tuple(int(v) for v in tile_index[best])
    centre = tuple(float(v) for v in origins[best] + s.tile_size / 2.0)
    return Estimate(
        settings=s,
        info=info,
        s_max=s_max,
        best_tile=tile,
        best_tile_centre=centre,
        n_tiles=len(origins),
        solvent_model=model,
        solvent_region={
            "inside": "inscribed ellipsoid",
            "R": "solvent definition > 0.9",
            "R'": "solvent definition <= 0.9",
        }[region_kind],
        solvent_edge=edge,
        content_1pct=content,
        confidence=table,
        raw_range=raw_range,
        lp_range=lp_range,
        outputs=stacked,
        output_names=outputs,
        block_stats=stats,
        plan=plan,
        sources=sources,
        final=final,
        target_occupancy=target_occupancy,
        noise_floor=noise_floor,
        warnings=warnings,
        cleanup=[lambda path=path: shutil.rmtree(path, ignore_errors=True) for path in temp_dirs],
    )
