"""The method from a map to its lazy per-voxel outputs, step by step (docs/method.md).

1. non-finite voxels (refused, or replaced with ``--allow-nonfinite``);
2. the low-pass (section 3), computed once into memory or a scratch store;
3. the global reductions (sections 3-4, :mod:`occupy_dask.reductions`);
4. the solvent model and the confidence table (sections 6-7, :mod:`occupy_dask.solvent`), and
   with ``--debias`` the noise floor (:mod:`occupy_dask.debias`);
5. the fused per-chunk pass (sections 5-8, :mod:`occupy_dask.fused`), returned lazily;
6. with ``--hist-match``, the histograms of each modified map and of the input (one more
   fused pass), and each modified map mapped onto the input's grey scale, lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from . import lowpass as lowpass_stage
from .blocks import Moments, block_grid, block_of, block_tasks, region
from .buffers import POOL, release_buffers, release_reserved_map, release_run_buffers
from .debias import NoiseFloor, map_noise_floor
from .fused import (
    LocalPlan,
    clipped,
    display_level,
    factor_name,
    fused_graph,
    lowpass_modified,
    modified_name,
    output_moments,
    submask_name,
    variability_limit,
)
from .io.read import FiniteSource, MapInfo, next_slab_start
from .kernels.histmatch import HistogramMatch, order_counts
from .kernels.histogram import N_BINS, density_from_counts, histogram_edges
from .kernels.local import block_ranges, ellipsoid_terms, load_in_background
from .reductions import Reductions, finite_median, global_reductions
from .resample import fourier_pad, fourier_pad_reference
from .scratch import (
    LowpassOnRead,
    Spiller,
    keeps_in_page_cache,
    lowpass_on_disk,
    materialise,
    reads_lowpass_from_spectrum,
    remove_folder,
    remove_in_background,
    scratch_folder,
    too_large_for_memory,
)
from .settings import RunOptions, Settings
from .solvent import SOLVENT_ADVICE, ConfidenceTable, SolventModel, confidence_table, content_one_percent, fit_solvent_model, solvent_edge


def estimate_map(
    raw_source, info: MapInfo, s: Settings, run=None, *, solvent_def=None, target_mask=None, options: RunOptions = RunOptions(), full=None
) -> Estimate:
    """Run the global steps of the method on the map ``raw_source`` (a source: ``shape`` and
    ``__getitem__``, stored axis order) and return the lazy per-voxel outputs. ``run(*objs,
    label=...)`` computes dask objects (progress and scheduler are the caller's). ``full``
    (an :class:`occupy_dask.api.FullMap`) is the input when ``raw_source`` is its ``--max-box``
    preview: the modified maps are then padded back to its box."""
    run = run or default_run
    if not getattr(run, "distributed", False):  # the kernels run in this process
        load_in_background()
    temp_dirs: list[Path] = []
    notes = []
    try:
        if options.allow_nonfinite:
            median, bad = finite_median(raw_source, s.shape, s.chunks, run)
            if bad:
                raw_source = FiniteSource(raw_source, median)
                notes.append(f"replaced {bad} NaN or infinite voxels with the median of the finite ones ({median:.6g})")
        sources = {"raw": raw_source}
        sources["lp"], lp_ranges = _lowpassed(raw_source, s, run, options, temp_dirs)
        release_reserved_map()  # a reservation the low-pass did not take (no low-pass, a --max-box preview's smaller map)
        release_run_buffers(run)  # the next pass reads blocks of other shapes: its memory is reused, not held twice
        if solvent_def is not None:
            sources["solvent_def"] = solvent_def
        if target_mask is not None:
            sources["target_mask"] = target_mask
        sources["scale"] = sources["lp"] if s.scale_mode == "occ" else sources["raw"]
        reductions = global_reductions(sources, s, run, lp_ranges)
        release_run_buffers(run)
        est = _estimate_from(reductions, sources, info, s, options.extra_outputs)
        if full is not None:
            est.full_info = full.info
        _finish_modified(est, full, run)
    except BaseException:
        release_reserved_map()
        for path in temp_dirs:
            remove_folder(path)
        raise
    est.warnings[:0] = notes
    est.cleanup.extend(lambda path=path: remove_folder(path) for path in temp_dirs)
    return est


def default_run(*objs, label: str = ""):
    """Compute dask objects on dask's default scheduler (``label`` names the stage for progress)."""
    return dask.compute(*objs)


def _lowpassed(raw_source, s: Settings, run, options: RunOptions, temp_dirs: list):
    """The low-passed map as a source (the raw map when the low-pass is below Nyquist) and its
    ranges (min, max, and both inside the inscribed ellipsoid), from the tasks that store it.

    A map whose spectra go to disk and whose blocks are slabs keeps only its filtered spectrum
    and low-passes each block as it is read (:class:`~occupy_dask.scratch.LowpassOnRead`):
    the passes then read a fraction of the map's bytes, and the map itself is never written."""
    if not s.lowpass_applied:
        return raw_source, None
    spiller, fft_folder = None, None
    spectrum = lowpass_stage.spectrum_bytes(s.shape, s.voxel_size, s.lowpass_angstrom, s.reference_compatible)
    if too_large_for_memory(spectrum, run):
        fft_folder = scratch_folder(options.temp_dir, "occupy_dask_fft_")
        temp_dirs.append(fft_folder)  # removed by the caller on an error or an interrupt, else when the estimate closes
        spiller = Spiller(fft_folder, run)
    block_bytes = getattr(run, "lowpass_block_bytes", lowpass_stage.TARGET_BLOCK_BYTES)
    chunks = lowpass_stage.input_chunks(s.shape, block_bytes)
    lp_lazy = lowpass_stage.lowpass(
        da.from_array(raw_source, chunks=chunks, lock=False, asarray=False, meta=np.empty((0, 0, 0), np.float32)),
        s.voxel_size,
        s.lowpass_angstrom,
        reference=s.reference_compatible,
        slab_planes=s.chunks[0] if s.slabs else None,  # slabs as the block reads
        spill=spiller,
        block_bytes=block_bytes,
    )
    to_disk = lowpass_on_disk(lp_lazy.nbytes, options, run)  # large, over the memory limit, or read by other processes
    if to_disk:
        release_reserved_map()  # before the low-pass's own memory grows
    if reads_lowpass_from_spectrum(s, to_disk, spiller is not None):
        remove_in_background(spiller.stores["spectrum"].path)  # read by the filtered stage; goes while the ranges pass runs
        filtered = spiller.stores["filtered"]
        cached = keeps_in_page_cache(spectrum, run)  # every pass reads it (its nz x ny x kept columns: the largest spectrum's bytes)
        source = LowpassOnRead(filtered.path, s.shape, filtered.shape[2], cached=cached)
        return source, _ranges(_block_ranges_of(source, s, run))
    source, folder, parts = materialise(lp_lazy, to_disk, options.temp_dir, run, "low-pass", read_chunks=s.chunks, measure=lowpass_block_ranges)
    if fft_folder is not None:  # the spectra are not needed once the low-passed map exists: they go while the next pass runs
        remove_in_background(fft_folder)
    if folder is not None:
        temp_dirs.append(folder)
    return source, _ranges(parts)


def _ranges(parts) -> tuple[float, float, float, float]:
    parts = np.array(parts)
    return float(parts[:, 0].min()), float(parts[:, 1].max()), float(parts[:, 2].min()), float(parts[:, 3].max())


def _block_ranges_of(source, s: Settings, run) -> list:
    """:func:`lowpass_block_ranges` of every block of the low-passed map read from ``source``."""
    tasks = block_tasks("occupy-ranges", ((_read_block_ranges, (source, start, stop)) for _, start, stop in block_grid(s.shape, s.chunks)))
    return list(run(*tasks, label="low-pass"))


def _read_block_ranges(source, start, stop) -> np.ndarray:
    with POOL.borrow() as take:
        block = block_of(source, region(start, stop), take, keep_from=next_slab_start(start, stop, source.shape))
        return lowpass_block_ranges(block, source.shape, start)


def lowpass_block_ranges(block: np.ndarray, shape, start) -> np.ndarray:
    """(min, max, min inside, max inside the inscribed ellipsoid) of one block of the low-passed map."""
    stop = tuple(a + n for a, n in zip(start, block.shape))
    return block_ranges(block, ellipsoid_terms(shape, start, stop))


def _estimate_from(red: Reductions, sources: dict, info: MapInfo, s: Settings, extra_outputs) -> Estimate:
    """Steps 4 and 5: solvent model, confidence, noise floor and target occupancy from the
    reductions; the lazy fused pass."""
    warnings: list[str] = []
    model, table, lp_edges, edge, content = _solvent_model(red, s)
    if table.suspicious:
        warnings.append(
            f"potentially bad solvent model: {table.n_unconfident} of {N_BINS} histogram bins are "
            f"mostly solvent (lowest confident scale {table.limit_value / red.s_max:.2f}); check --plot and "
            "consider --solvent-def <mask.mrc> or a stronger --lowpass"
        )
    noise_floor = None
    if s.debias:
        value_max = (red.raw if s.scale_mode == "res" else red.lp).hi
        noise_floor = map_noise_floor(s, model, table, red.lp_counts, red.tile_moments, red.tile_origins, red.s_max, value_max)
        if table.suspicious:
            warnings.append("the noise floor of --debias comes from that solvent model and is unreliable too")
    if np.count_nonzero(table.fraction > 0) == 0:
        warnings.append(
            f"the solvent model leaves no voxel with confident content (confidence is 0 everywhere; the scale is unaffected); {SOLVENT_ADVICE}"
        )
    nlrc_limit = (table.limit_value / red.s_max) if s.nlrc else None
    target_occupancy = None
    if red.target_tau is not None:
        target_occupancy = TargetOccupancy(red.target.n, red.target_tau, red.target.hi, red.target_s_max, nlrc_limit, noise_floor)
    if s.omit_confidence and s.modifications:
        warnings.append(
            "--omit-confidence: the modification is not weighted by the confidence, so solvent noise is modified (amplified) as much as content"
        )
    for mod in s.modifications:
        if mod.kind != "exclude" and mod.amount < -1:
            warnings.append(f"amplify amount {mod.amount:g} is below -1 (attenuation beyond the scale itself); this is untested")

    outputs = output_names(s, extra_outputs)
    raw_range = (red.raw.lo, red.raw.hi)
    plan = LocalPlan(
        settings=s,
        s_max=red.s_max,
        table=table.fraction.astype(np.float32),
        edges=lp_edges,
        lp_range=(red.lp.lo, red.lp.hi),
        outputs=outputs,
        nlrc_limit=nlrc_limit,
        noise_floor=noise_floor,
        input_range=raw_range,
        solvent_mu=model.mu,
        solvent_sigma=model.sigma,
    )
    stacked, stats = fused_graph(plan, sources)
    final = {}
    if s.lowpass_output_angstrom:
        final = {modified_name(i): lowpass_modified(stacked[outputs.index(modified_name(i))], s) for i in range(len(s.modifications))}
    return Estimate(
        settings=s,
        info=info,
        s_max=red.s_max,
        best_tile=tuple(int(v) for v in red.tile_index[red.best_tile]),
        best_tile_centre=tuple(float(v) for v in red.tile_origins[red.best_tile] + s.tile_size / 2.0),
        n_tiles=len(red.tile_origins),
        solvent_model=model,
        solvent_region=red.solvent_region_name(s),
        solvent_edge=edge,
        content_1pct=content,
        confidence=table,
        raw_range=raw_range,
        lp_range=plan.lp_range,
        outputs=stacked,
        output_names=outputs,
        block_stats=stats,
        plan=plan,
        sources=sources,
        final=final,
        target_occupancy=target_occupancy,
        noise_floor=noise_floor,
        warnings=warnings,
        confident_voxels=int(np.asarray(red.lp_counts)[np.asarray(table.fraction) > 0.5].sum()),
    )


def _finish_modified(est: Estimate, full, run) -> None:
    """Step 6: the modified maps (and subtraction masks) of a ``--max-box`` preview padded back
    to the input's box; every modified map that a later stage made (a low-pass, the way back, or
    none with ``--hist-match``) histogram-matched to the input or clipped to its range, the
    masks clipped to [0, 1]."""
    s = est.settings
    names = [modified_name(i) for i in range(len(s.modifications))]
    if not names:
        return
    if full is not None:
        chunks = est.full_chunks
        planes = chunks[0] if chunks[1:] == tuple(full.info.shape[1:]) else min(chunks[0], 64)
        back = names + [n for n in est.output_names if n.startswith("submask_")]
        if s.reference_compatible:  # the whole map at once, as the reference
            padded = {n: dask.delayed(fourier_pad_reference, pure=True)(est[n], full.info.shape) for n in back}
            est.final.update({n: da.from_delayed(p, full.info.shape, np.float32).rechunk(chunks) for n, p in padded.items()})
        else:
            est.final.update({n: fourier_pad(est[n], full.info.shape, planes) for n in back})
        est.final.update({n: clipped(est[n], (0.0, 1.0)) for n in back if n.startswith("submask_")})
    matched = [modified_name(i) for i, m in enumerate(s.modifications) if m.kind != "exclude"]  # as the reference: not exclusion alone
    if s.hist_match and matched:
        source, chunks, value_range = (
            (full.source, est.full_chunks, full.value_range) if full is not None else (est.sources["raw"], s.chunks, est.raw_range)
        )
        reference = da.from_array(source, chunks=chunks, lock=False, asarray=False, meta=np.empty((0, 0, 0), np.float32))
        est.final.update(histogram_matched({n: est[n] for n in matched}, reference, run, value_range))
    if not s.clips_modified_in_pass:  # made by a later stage: clipped here, unless matched
        value_range = full.value_range if full is not None else est.raw_range
        est.final.update({n: clipped(est[n], value_range) for n in names if not (s.hist_match and n in matched)})


def histogram_matched(arrays: dict[str, da.Array], reference: da.Array, run, reference_range=None) -> dict[str, da.Array]:
    """Each of ``arrays`` given the grey scale of ``reference`` (the input, with its (min, max)
    ``reference_range``; OccuPy's ``--hist-match``). The histograms are exact chunked
    reductions (one pass over the arrays); the mapping is applied lazily, block by block, as
    the arrays are made again."""
    counts = run(*[_order_counts(a) for a in arrays.values()], _order_counts(reference), label="histogram matching")
    matched = {}
    for (name, array), array_counts in zip(arrays.items(), counts[:-1]):
        match = dask.delayed(HistogramMatch.between(array_counts, counts[-1], reference_range), pure=True)
        matched[name] = array.map_blocks(_apply_match, match, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    return matched


def _apply_match(block: np.ndarray, match: HistogramMatch) -> np.ndarray:
    return match.apply(block)


def _order_counts(array: da.Array):
    """Lazy ordered-bin histogram of a dask array: per block, then summed four at a time."""
    parts = [dask.delayed(order_counts, pure=True)(block) for block in array.to_delayed().ravel()]
    while len(parts) > 1:
        parts = [dask.delayed(sum, pure=True)(parts[i : i + 4]) for i in range(0, len(parts), 4)]
    return parts[0]


def _solvent_model(red: Reductions, s: Settings):
    """Sections 6-7: the solvent model fitted to the solvent region's histogram, the confidence
    table over the low-passed map's histogram, its bin edges, the solvent edge and the content
    level at 1% of solvent."""
    lp_edges = histogram_edges(red.lp.lo, red.lp.hi)
    region_edges = histogram_edges(red.region.lo, red.region.hi)
    if s.reference_compatible:
        fit_x = np.linspace(float(np.float32(red.region.lo)), float(np.float32(red.region.hi)), N_BINS)
    else:
        fit_x = region_edges[:-1].astype(np.float64)
    model = fit_solvent_model(fit_x, density_from_counts(red.region_counts, region_edges), region_edges)
    table = confidence_table(model, density_from_counts(red.lp_counts, lp_edges), lp_edges, s.hedge_confidence, reference=s.reference_compatible)
    return model, table, lp_edges, solvent_edge(model, region_edges), content_one_percent(model, region_edges)


def output_names(s: Settings, extra_outputs=()) -> tuple[str, ...]:
    """The per-voxel outputs of the fused pass: scale, confidence, the extra ones asked for
    (``lowpass``; ``factor`` adds each modification's factor), each modified map, and the
    subtraction mask of each attenuation or sigmoid when the settings ask for them."""
    outputs = ["scale", "confidence", *[n for n in extra_outputs if n != "factor"]]
    for i, mod in enumerate(s.modifications):
        outputs.append(modified_name(i))
        if "factor" in extra_outputs and mod.kind != "exclude":
            outputs.append(factor_name(i))
        if s.subtraction_masks and mod.removes_density:
            outputs.append(submask_name(i))
    return tuple(outputs)


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
    """The result of the method on one map: global numbers computed, per-voxel maps lazy (dask
    arrays in stored axis order; ``scale`` and ``confidence`` float32 in [0, 1]).

    Use it as a context manager, or call ``close()``: it removes the temporary stores the lazy
    maps read."""

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
    block_stats: object  # lazy list of per-chunk statistics of the fused pass
    plan: LocalPlan
    sources: dict = field(default_factory=dict, repr=False)
    final: dict = field(default_factory=dict, repr=False)  # outputs replaced by a later stage (low-passed modified maps)
    target_occupancy: TargetOccupancy | None = None
    noise_floor: NoiseFloor | None = None  # --debias
    warnings: list[str] = field(default_factory=list)
    cleanup: list = field(default_factory=list, repr=False)  # callables run by close()
    confident_voxels: int = 0  # voxels with confidence above 0.5 (confident content)
    full_info: MapInfo | None = None  # --max-box: the input's geometry; the modified maps are on its grid
    _stats: list | None = field(default=None, repr=False)  # the fused pass's statistics, once computed

    def __getitem__(self, name: str) -> da.Array:
        if name in self.final:
            return self.final[name]
        return self.outputs[self.output_names.index(name)]

    def has_block_stats(self, name: str) -> bool:
        """Whether the fused pass's per-chunk statistics describe output ``name`` as written."""
        return name in self.output_names and name not in self.final

    @property
    def full_chunks(self) -> tuple[int, int, int]:
        """Blocks of the maps on the input's grid (``full_info``): as the settings would cut it."""
        if self.full_info is None:
            return self.settings.chunks
        return replace(self.settings, shape=tuple(self.full_info.shape)).chunks

    def grid_of(self, name: str) -> tuple[MapInfo, tuple[int, int, int]]:
        """Geometry and blocks of output ``name``: a --max-box preview's modified maps and
        subtraction masks are on the input's grid, everything else on the estimate's."""
        if self.full_info is not None and name.startswith(("modified_", "submask_")):
            return self.full_info, self.full_chunks
        return self.info, self.settings.chunks

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

    def record_block_stats(self, stats: list) -> None:
        """Keep the fused pass's per-chunk statistics (a writer computed them)."""
        self._stats = list(stats)

    @property
    def variability_limit(self) -> float | None:
        """Section 10: the mean scale data where the local scale is 1, over ``s_max`` (None
        when no voxel has full scale). Known once the maps are written; otherwise this runs the
        fused pass once (on dask's default scheduler) to find it."""
        if self._stats is None:
            self._stats = list(dask.compute(self.block_stats)[0])
        return variability_limit(self._stats, self.s_max)

    @property
    def display_level(self) -> float | None:
        """The input's level that encloses the confident-content volume (``confident_voxels``):
        where a surface of the input shows the content the confidence finds. Known once the
        maps are written."""
        if self._stats is None:
            return None
        return display_level(self._stats, self.plan.input_range, self.confident_voxels)

    def output_moments(self, name: str) -> Moments | None:
        """Moments of output ``name`` as the fused pass made it (None before it ran)."""
        if self._stats is None or not self.has_block_stats(name):
            return None
        return output_moments(self._stats, name)

    def close(self) -> None:
        """Remove temporary files and stores (a spilled low-passed map); lazy maps that read
        them cannot be computed afterwards."""
        while self.cleanup:
            self.cleanup.pop()()
        release_buffers()  # the chunk buffers this process lent the passes (free ones only), the planes stashed

    def __enter__(self) -> Estimate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
