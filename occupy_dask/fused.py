"""Sections 5-8 of the method: the fused per-chunk pass.

One task per chunk reads the chunk's scale data with its halo, the low-passed and the raw block,
and makes every per-voxel output there: the ball maximum and the local scale (debiased or
recalibrated when asked), the confidence from the solvent model's table, and each modification
of the map with its factor. The same task returns the chunk's statistics (moments of each output
for the map headers, and the sums of the variability limit), so no output is read back.
"""

from __future__ import annotations

import operator
import os
import uuid
from dataclasses import dataclass, replace
from functools import cached_property

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from . import lowpass as lowpass_stage
from .blocks import Moments, block_grid, block_of, ordered_keys, region
from .buffers import POOL, writer
from .debias import NoiseFloor
from .io.read import ArraySource, read_with_halo
from .kernels.ballmax import ball_max_valid, ring_shape
from .kernels.histogram import confidence_lookup, confidence_lookup_reference, histogram_counts, histogram_edges
from .kernels.local import debiased_scale, local_scale, masked_sum, recalibrate_noise_level
from .kernels.modify import modify_into, power_factor, sigmoid_factor, subtraction_mask, subtraction_table, synthetic_solvent
from .settings import Modification, Settings


def modified_name(i: int) -> str:
    """The output name of the ``i``-th modified map."""
    return f"modified_{i}"


def factor_name(i: int) -> str:
    """The output name of the ``i``-th modification's factor."""
    return f"factor_{i}"


def submask_name(i: int) -> str:
    """The output name of the ``i``-th modification's subtraction mask."""
    return f"submask_{i}"


@dataclass(frozen=True)
class LocalPlan:
    """What every chunk of the fused pass needs besides its data (small, picklable): the settings
    and the global numbers the reductions found."""

    settings: Settings
    s_max: float  # the full-scale reference
    table: np.ndarray  # confidence per histogram bin of the low-passed map (float32)
    edges: np.ndarray  # that histogram's bin edges
    lp_range: tuple[float, float]  # min and max of the low-passed map
    outputs: tuple[str, ...]  # which per-voxel results to make, in this order
    nlrc_limit: float | None = None  # --nlrc: the scale at the confidence limit
    noise_floor: NoiseFloor | None = None  # --debias: the scale is measured above it
    input_range: tuple[float, float] | None = None  # min and max of the input: modified maps are clipped to it
    solvent_mu: float = 0.0  # the solvent model, for the synthetic solvent of attenuation
    solvent_sigma: float = 0.0

    @cached_property
    def kernel(self) -> np.ndarray:
        return self.settings.kernel

    @property
    def halo(self) -> tuple[int, int, int]:
        return self.settings.halo

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """The range modified maps are clipped to here; None when a later stage makes them."""
        return self.input_range if self.settings.clips_modified_in_pass else None


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


def local_outputs(plan: LocalPlan, scale_padded, lp_block, raw_block, start, stop, out=None, take=None, moments=None) -> dict[str, np.ndarray]:
    """All per-voxel results of one chunk ``[start, stop)`` from its scale data (with halo),
    low-passed and raw data: scale, confidence, and each modification's map and factor.

    Each result asked for in ``plan.outputs`` is written into its slot of ``out`` (an
    ``(n_outputs, *block)`` float32 array, allocated when not given); ``take(shape)``, when
    given, lends the scratch arrays (intermediates not asked for, the max filter's buffer), so
    that a chunk touches as little fresh memory as it can. ``moments``, a dict, receives the
    :class:`~occupy_dask.blocks.Moments` of the results a kernel summed as it made them (the
    confidence).
    """
    s = plan.settings
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
    if s.reference_compatible:
        confidence_lookup_reference(lp_block, plan.table, *plan.lp_range, out=confidence)
    else:
        sums = np.empty(4) if moments is not None and "confidence" in plan.outputs else None
        confidence_lookup(lp_block, plan.table, plan.edges, out=confidence, moments=sums)
        if sums is not None:  # the slot keeps these values (--omit-confidence weights by a copy)
            moments["confidence"] = Moments.from_row(confidence.size, sums)
    if s.omit_confidence:  # the modification is not weighted by the confidence; the reference writes that weight
        if s.reference_compatible:
            confidence[...] = 1.0
        else:
            confidence = take(shape)
            confidence[...] = 1.0
    if "lowpass" in plan.outputs:
        slots["lowpass"][...] = lp_block
    raw_block = np.asarray(raw_block, dtype=np.float32)
    for i, mod in enumerate(s.modifications):
        if submask_name(i) in plan.outputs:
            subtraction_mask(scale, subtraction_table(mod.kind, mod.exponent, mod.power, mod.pivot), out=slots[submask_name(i)])
        if modified_name(i) not in plan.outputs and factor_name(i) not in plan.outputs:
            continue
        factor = modification_factor(mod, scale, s.scale_limit, s.reference_compatible, out=slot(factor_name(i)))
        noise = None
        if mod.kind == "attenuate" and not s.exclude_solvent:
            noise = synthetic_solvent(start, stop, s.seed, plan.solvent_mu, plan.solvent_sigma)
        modify_into(
            raw_block, factor, confidence, slot(modified_name(i)), exclude_solvent=s.exclude_solvent, value_range=plan.clip_range, noise=noise
        )
    return slots


def chunk_task(plan: LocalPlan, sources, start, stop, targets=None, write_behind: tuple[int, str] | None = None):
    """One chunk's outputs and statistics. With ``targets`` (one writable region target per
    output, or None to skip it) the outputs are written from lent buffers and only the
    statistics are returned: here, or, when the task runs in the process ``write_behind``
    names (``(process id, writer key)``) and that run's writer is still open, by that writer
    (:func:`occupy_dask.buffers.open_writer`); otherwise ``(stacked outputs, statistics)``."""
    behind = writer(write_behind[1]) if write_behind is not None and write_behind[0] == os.getpid() else None
    halo = plan.halo
    shape = tuple(b - a for a, b in zip(start, stop))
    key = region(start, stop)
    with POOL.borrow() as take:
        scale_padded = read_with_halo(sources["scale"], start, stop, halo, out=take(tuple(n + 2 * h for n, h in zip(shape, halo))))
        core = tuple(slice(h, h + n) for h, n in zip(halo, shape))
        blocks = {}
        for name in ("lp", "raw"):  # the scale data is one of them: its block is the padded block's core, not a second read
            if sources[name] is sources["scale"] and not isinstance(sources[name], ArraySource):
                if name == "lp":  # the confidence lookup reads the core where it is
                    blocks[name] = scale_padded[core]
                else:  # the modification reads the raw map contiguously
                    blocks[name] = take(shape)
                    blocks[name][...] = scale_padded[core]
            else:
                blocks[name] = block_of(sources[name], key, take)
        lp_block, raw_block = blocks["lp"], blocks["raw"]
        if targets is None:
            stacked = np.empty((len(plan.outputs), *shape), dtype=np.float32)
        elif behind is not None:  # given back to the pool by the writer, once written
            stacked = POOL.take((len(plan.outputs), *shape))
        else:
            stacked = take((len(plan.outputs), *shape))
        summed = {}
        results = local_outputs(plan, scale_padded, lp_block, raw_block, start, stop, out=stacked, take=take, moments=summed)
        stats = {"variability": masked_sum(results["scale"], scale_padded[core], 1.0)}
        if plan.input_range is not None:  # the input's histogram, for the display level of the ChimeraX script
            stats["input_counts"] = histogram_counts(raw_block, *plan.input_range)
        for name in plan.outputs:
            stats[name] = summed[name] if name in summed else Moments.of(results[name])
        if targets is None:
            return stacked, stats
        if behind is None:
            _write_chunk(plan, targets, key, results)
    if behind is not None:
        behind.submit(lambda: _write_chunk(plan, targets, key, results), [stacked])
    return stats


def _write_chunk(plan: LocalPlan, targets, key, results: dict) -> None:
    for name, target in zip(plan.outputs, targets):
        if target is not None:
            target[key] = results[name]


def variability_limit(stats: list[dict], s_max: float) -> float | None:
    """Section 10: the mean scale data at full scale (local scale 1) over ``s_max``; None where
    no voxel has full scale. From the per-chunk statistics of the fused pass."""
    count = sum(st["variability"][0] for st in stats)
    total = sum(st["variability"][1] for st in stats)
    return (total / count) / s_max if count else None


def display_level(stats: list[dict], input_range, voxels: int) -> float | None:
    """The input's value above which ``voxels`` voxels lie (to a bin of its 1000-bin histogram,
    the bin's lower edge): a surface at it encloses that volume. None without the histogram."""
    if not stats or "input_counts" not in stats[0] or voxels <= 0:
        return None
    counts = sum(st["input_counts"] for st in stats)
    from_top = np.cumsum(counts[::-1])
    bins = int(np.searchsorted(from_top, voxels))  # bins from the top that hold at least that many
    return float(histogram_edges(*input_range)[max(len(counts) - 1 - bins, 0)])


def output_moments(stats: list[dict], name: str) -> Moments:
    """Moments of output ``name`` over the whole map, from the per-chunk statistics."""
    total = Moments()
    for st in stats:
        total = total + st[name]
    return total


def store_outputs(plan: LocalPlan, sources: dict, targets: dict, write_behind: str | None = None) -> Delayed:
    """A lazy list of per-chunk statistics whose computation writes the outputs named in
    ``targets`` (name -> region-writable target, e.g. an MRC or zarr target) chunk by chunk,
    each from the fused task that makes it: no chunk result waits in memory for a store task.
    ``write_behind``: the key of a writer of this process (:func:`occupy_dask.buffers.open_writer`;
    close it after computing): tasks that run in this process leave their writes to it, tasks
    elsewhere write."""
    chunks = plan.settings.chunks
    per_output = tuple(targets.get(name) for name in plan.outputs)
    token = dask.base.tokenize(plan.settings.shape, chunks, plan.s_max, plan.outputs, uuid.uuid4().hex)
    name, gather = f"occupy-fused-store-{token}", f"occupy-gather-{token}"
    owner = (os.getpid(), write_behind) if write_behind is not None else None
    grid = list(block_grid(plan.settings.shape, chunks))
    keys = ordered_keys(name, len(grid))  # run in block order: written in file order, what a read leaves in the page cache read next
    layer = {key: (chunk_task, plan, sources, start, stop, per_output, owner) for key, (_, start, stop) in zip(keys, grid)}
    layer[gather] = (list, list(layer))
    return Delayed(gather, HighLevelGraph.from_collections(gather, layer, dependencies=()))


def fused_graph(plan: LocalPlan, sources: dict):
    """Lazy stacked outputs ``(n_outputs, *shape)`` and a lazy list of per-chunk statistics;
    each chunk's fused task runs once however many of its outputs are used."""
    shape, chunks = plan.settings.shape, plan.settings.chunks
    token = dask.base.tokenize(shape, chunks, plan.s_max, plan.outputs, uuid.uuid4().hex)
    fused, out, stats, gather = (f"occupy-{kind}-{token}" for kind in ("fused", "out", "stats", "gather"))
    fused_layer, array_layer, stats_layer = {}, {}, {}
    for index, start, stop in block_grid(shape, chunks):
        fused_layer[(fused, *index)] = (chunk_task, plan, sources, start, stop)
        for c in range(len(plan.outputs)):
            array_layer[(out, c, *index)] = (_take_output, (fused, *index), c)
        stats_layer[(stats, *index)] = (operator.getitem, (fused, *index), 1)
    graph = HighLevelGraph(
        {fused: fused_layer, out: array_layer, stats: stats_layer, gather: {gather: (list, list(stats_layer))}},
        {fused: set(), out: {fused}, stats: {fused}, gather: {stats}},
    )
    dim_chunks = tuple(tuple(min(c, n - s) for s in range(0, n, c)) for n, c in zip(shape, chunks))
    stacked = da.Array(graph, out, ((1,) * len(plan.outputs), *dim_chunks), dtype=np.float32)
    return stacked, Delayed(gather, graph)


def _take_output(result, channel):
    return result[0][channel : channel + 1]


def lowpass_modified(array: da.Array, s: Settings) -> da.Array:
    """``--lowpass-amplified``: a modified map low-passed (pencil FFT as the input's), in the
    settings' blocks. Not clipped: the stage that finishes the map does that."""
    filtered = lowpass_stage.lowpass(array, s.voxel_size, s.lowpass_output_angstrom, reference=s.reference_compatible)
    return filtered.rechunk(s.chunks, method="tasks")


def clipped(array: da.Array, value_range) -> da.Array:
    """``array`` clipped to ``value_range`` (the input's min and max), block by block."""
    lo, hi = np.float32(value_range[0]), np.float32(value_range[1])
    return array.map_blocks(np.clip, lo, hi, dtype=np.float32)


def one_modification(plan: LocalPlan, sources: dict, mod: Modification, **changes) -> da.Array:
    """One more modification of an estimated map as a lazy array (its own fused pass), clipped
    to the input's range; ``changes`` are settings that differ from the estimate's
    (exclude_solvent, scale_limit, lowpass_output_angstrom, seed). It is never
    histogram-matched (that needs the whole map's histogram first)."""
    s = replace(plan.settings, modifications=(mod,), hist_match=False, **changes)
    plan = replace(plan, settings=s, outputs=(modified_name(0),))
    stacked, _ = fused_graph(plan, sources)
    return clipped(lowpass_modified(stacked[0], s), plan.input_range) if s.lowpass_output_angstrom else stacked[0]
