"""Python API: estimate from a path, a numpy array or a dask array; modify; write; or
:func:`run_map` from files to files (what the command line runs).

Every run starts the same way: :func:`open_inputs` opens the map and masks and derives the
settings, :func:`occupy_dask.estimation.estimate_map` runs the method on them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import dask.array as da
import numpy as np

from .errors import MapError, SettingsError
from .estimation import Estimate, default_run, estimate_map
from .fused import modified_name, one_modification
from .io.read import MapInfo, check_same_grid, open_map
from .outputs import (
    check_outputs,
    make_folders,
    map_outputs,
    output_bytes,
    output_locks,
    output_paths,
    remove_empty_folders,
    resolve_format,
    write_maps,
)
from .resample import fourier_crop, reduced_shape, reduced_voxel_size
from .scratch import array_source, scratch_bytes
from .settings import RunOptions, Settings, check_scale_limit, derive_settings, modifications_from_options


@dataclass(frozen=True)
class FullMap:
    """The input map of a ``--max-box`` preview: its geometry, its data and its (min, max)."""

    info: MapInfo
    source: object
    value_range: tuple[float, float]


@dataclass
class Inputs:
    """An opened map (and masks) with the settings derived from its geometry; ``close()``
    removes temporary copies (a decompressed gzip map, spilled arrays)."""

    info: MapInfo
    source: object
    settings: Settings
    solvent_def: object | None = None
    target_mask: object | None = None
    files: list[Path] = field(default_factory=list)  # input files, never to be overwritten
    cleanup: list = field(default_factory=list)
    full: FullMap | None = None  # --max-box: the input itself, when the method runs on its cropped preview

    def close(self) -> None:
        while self.cleanup:
            self.cleanup.pop()()


def open_inputs(
    data, *, voxel_size=None, solvent_def=None, target_mask=None, settings: Settings | None = None, temp_dir=None, run=None, **options
) -> Inputs:
    """Open ``data`` (a map path, or a 3D numpy/dask array with ``voxel_size`` in Å) and the
    masks (paths or arrays on the same grid); derive the settings (``options``: keywords of
    :func:`derive_settings`) unless ``settings`` are given. Arrays that workers in other
    processes must read (a distributed ``run``) are spilled under ``temp_dir``."""
    inputs = Inputs(info=None, source=None, settings=None)
    distributed = getattr(run, "distributed", False)

    def spilled(array):
        source, folder = array_source(array, temp_dir, run or default_run, distributed)
        if folder is not None:
            inputs.cleanup.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        return source

    def mask_source(mask, role):
        if mask is None:
            return None
        if isinstance(mask, (str, os.PathLike)):  # a file: shape and voxel size must match the map's
            opened = open_map(mask, temp_dir=temp_dir, role=role)
            inputs.cleanup.append(opened.close)
            inputs.files.append(Path(mask))
            check_same_grid(opened.info, inputs.info, role)
            return opened.source
        source = spilled(mask)
        if tuple(source.shape) != tuple(inputs.info.shape):
            raise MapError(f"{role} has shape {tuple(source.shape)}, the map has {tuple(inputs.info.shape)}")
        return source

    try:
        if isinstance(data, (str, os.PathLike)):
            mapin = open_map(data, temp_dir=temp_dir)
            inputs.cleanup.append(mapin.close)
            inputs.files.append(Path(data))
            inputs.info, inputs.source = mapin.info, mapin.source
            if voxel_size is not None:
                inputs.info.voxel_size = tuple(np.broadcast_to(np.asarray(voxel_size, float), (3,)))
        else:
            if np.ndim(data) != 3:
                raise ValueError(f"a 3D volume is needed, got an array of shape {np.shape(data)}")
            if voxel_size is None:
                raise TypeError("voxel_size (Å, a float or a (z, y, x) tuple) is needed with an array: the low-pass and the kernel depend on it")
            inputs.source = spilled(data)
            inputs.info = MapInfo(
                path=None,
                name="map",
                shape=tuple(int(n) for n in np.shape(data)),
                voxel_size=tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, float), (3,))),
            )
        inputs.solvent_def = mask_source(solvent_def, "solvent definition")
        inputs.target_mask = mask_source(target_mask, "target mask")
        max_box = settings.max_box if settings is not None else options.get("max_box")
        reduced = reduced_shape(inputs.info.shape, max_box)
        if reduced is not None:  # a preview: the method runs on the map (and masks) cropped in Fourier space
            shape = inputs.info.shape
            reference = settings.reference_compatible if settings is not None else options.get("reference_compatible", False)
            small, value_range = fourier_crop(inputs.source, shape, reduced, reference=reference)
            inputs.full = FullMap(inputs.info, inputs.source, value_range)
            inputs.source = spilled(small)
            inputs.info = replace(inputs.info, shape=reduced, voxel_size=reduced_voxel_size(inputs.info.voxel_size, shape, reduced))
            for role in ("solvent_def", "target_mask"):
                if getattr(inputs, role) is not None:
                    setattr(inputs, role, spilled(fourier_crop(getattr(inputs, role), shape, reduced, reference=reference)[0]))
            if settings is not None:
                settings = replace(settings, shape=reduced, voxel_size=inputs.info.voxel_size, full_shape=shape)
            else:
                options = {**options, "full_shape": shape}
        try:
            inputs.settings = settings if settings is not None else derive_settings(inputs.info.shape, inputs.info.voxel_size, **options)
        except SettingsError as exc:
            if reduced is None:
                raise
            raise SettingsError(f"--max-box {max_box} crops the map to {reduced} voxels: {exc}; use a larger --max-box") from None
    except BaseException:
        inputs.close()
        raise
    return inputs


def _runner(run=None, client=None):
    from .cluster import Runner

    if client is not None:
        return Runner(client=client, quiet=True)
    return run or Runner(quiet=True)


def estimate(
    data,
    *,
    voxel_size: float | tuple[float, float, float] | None = None,
    solvent_def=None,
    target_mask=None,
    settings: Settings | None = None,
    temp_dir: str | None = None,
    run=None,
    client=None,
    allow_nonfinite: bool = False,
    **options,
) -> Estimate:
    """Estimate local scale and confidence (docs/method.md sections 1-7).

    ``data`` is a map path (MRC/CCP4, optionally gzip; zarr or OME-Zarr), or a 3D numpy/dask
    array in (z, y, x) order with ``voxel_size`` in Å. ``solvent_def`` and ``target_mask`` (paths
    or arrays on the same grid) are the solvent definition and the mask whose occupancy is
    reported as ``target_occupancy`` (section 9). ``options`` are :func:`derive_settings`
    keywords (``resolution``, ``lowpass``, ``kernel_size``, ``tile_size``, ``occupancy``,
    ``debias``, ``chunks``, ...). The global numbers (``s_max``, solvent model, limits) are
    computed now; ``scale`` and ``confidence_map`` are lazy dask arrays, and
    ``variability_limit`` is known once the maps are written. Use it as a context manager, or
    call ``close()``. With a distributed ``client`` the reductions run on its cluster (compute
    the lazy maps there too); arrays and the low-passed map are then kept in temporary zarr
    stores under ``temp_dir``, which must be reachable by the workers. With ``max_box`` (a
    preview of a large map) the estimate runs on the map Fourier-cropped to that box:
    ``scale`` and ``confidence_map`` are on that grid, ``est.modified(i)`` back on the input's.
    """
    runner = _runner(run, client) if (run is not None or client is not None) else default_run
    inputs = open_inputs(
        data, voxel_size=voxel_size, solvent_def=solvent_def, target_mask=target_mask, settings=settings, temp_dir=temp_dir, run=runner, **options
    )
    try:
        est = estimate_map(
            inputs.source,
            inputs.info,
            inputs.settings,
            runner,
            solvent_def=inputs.solvent_def,
            target_mask=inputs.target_mask,
            options=RunOptions(temp_dir=temp_dir, allow_nonfinite=allow_nonfinite),
            full=inputs.full,
        )
    except BaseException:
        inputs.close()
        raise
    est.cleanup.append(inputs.close)
    return est


def modify(
    est: Estimate,
    *,
    amount: float | None = None,
    gamma: float | None = None,
    attenuate: bool = False,
    sigmoid: float | None = None,
    pivot: float | None = None,
    exclude_solvent: bool | None = None,
    scale_limit: float | None = None,
    lowpass_output: float | None = None,
    seed: int | None = None,
) -> da.Array:
    """The input map modified by its local scale (docs/method.md section 8), lazily.

    Give one modification: ``amount`` (amplify with ``a`` in [-1, 1]; negative attenuates),
    ``gamma`` (with ``attenuate=True`` for attenuation), ``attenuate=True`` alone (amount -1),
    ``sigmoid`` with ``pivot``, or only ``exclude_solvent=True``. Unset options keep the
    estimate's settings. Returns a float32 dask array in stored axis order, clipped to the
    input's range; compute it while ``est`` is open.
    """
    s = est.settings
    if est.full_info is not None:
        raise SettingsError(
            "modify() needs a full-resolution estimate; for a max_box preview give the modification to estimate() "
            "(amplify=..., gamma=..., sigmoid=..., ...) and use est.modified(), which is back on the input's grid"
        )
    exclude = s.exclude_solvent if exclude_solvent is None else bool(exclude_solvent)
    mods = modifications_from_options(
        amplify=(amount is not None or gamma is not None) and not attenuate,
        attenuate=attenuate,
        amplify_amount=amount,
        gamma=gamma,
        sigmoid=sigmoid,
        pivot=pivot,
        exclude_solvent=exclude,
    )
    if len(mods) != 1:
        raise SettingsError("give exactly one modification: amount, gamma, attenuate, sigmoid with pivot, or exclude_solvent")
    limit = s.scale_limit if scale_limit is None else float(scale_limit)
    check_scale_limit(limit)
    return one_modification(
        est.plan,
        est.sources,
        mods[0],
        exclude_solvent=exclude,
        scale_limit=limit,
        lowpass_output_angstrom=lowpass_output,
        seed=s.seed if seed is None else int(seed),
    )


def write(
    est: Estimate,
    output_dir: str | os.PathLike = ".",
    *,
    output_map: str | None = None,
    output_format: str | None = None,
    overwrite: bool = False,
    run=None,
    client=None,
) -> dict[str, Path]:
    """Write the scale and confidence maps of ``est`` (and its modified maps) as MRC files with
    the input's header geometry, or as zarr / OME-Zarr (``output_format``, or ``output_map``'s
    suffix); on ``client``'s cluster when given. Afterwards ``est.variability_limit`` is known."""
    options = RunOptions(output_dir=Path(output_dir), output_map=output_map, output_format=output_format, overwrite=overwrite, save_chimerax=False)
    fmt = resolve_format(output_map, output_format)
    paths = {k: v for k, v in output_paths(est.info, est.settings, options, fmt).items() if k in est.output_names}
    check_outputs(paths, [est.info.path] if est.info.path is not None else [], overwrite)
    return write_maps(est, paths, _runner(run, client), fmt)


@dataclass
class RunResult:
    """What :func:`run_map` wrote and found."""

    estimate: Estimate
    outputs: dict[str, Path]
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def variability_limit(self) -> float | None:
        return self.estimate.variability_limit


def run_map(
    input_map: str | os.PathLike, options: RunOptions = RunOptions(), *, solvent_def=None, target_mask=None, runner=None, **settings_options
) -> RunResult:
    """Estimate the local scale of one map file, modify it as the settings ask, and write every
    output (maps, log, ChimeraX script, plots) as ``options`` say.

    ``settings_options`` are :func:`derive_settings` keywords, applied to the opened map's
    geometry. On a distributed ``runner`` temporary stores go to the output directory unless
    ``options.temp_dir`` says otherwise, since workers elsewhere must reach them. Before any
    work the outputs are checked (inputs, existing files, free space, a concurrent run writing
    the same names); a run that fails leaves no output, and no folder it created.
    """
    runner = _runner(runner)
    fmt = resolve_format(options.output_map, options.output_format)
    scratch_in_outputs = options.temp_dir is None and runner.distributed
    if scratch_in_outputs:
        options = replace(options, temp_dir=str(Path(options.output_dir).absolute()))
    created: list[Path] = []
    inputs = None
    try:
        if scratch_in_outputs:  # the gzip input is decompressed there too
            created = make_folders([Path(options.output_dir)])
        inputs = open_inputs(input_map, solvent_def=solvent_def, target_mask=target_mask, temp_dir=options.temp_dir, run=runner, **settings_options)
        paths = output_paths(inputs.info, inputs.settings, options, fmt)
        inputs.settings = runner.fit_chunks(inputs.settings, len(map_outputs(paths)))  # automatic chunks: as large as the memory allows
        runner.check_memory(inputs.settings.chunks, inputs.settings.halo, len(map_outputs(paths)))
        needed = output_bytes(
            paths, (inputs.full.info if inputs.full is not None else inputs.info).shape, fmt
        )  # a preview's modified maps: full size
        temp = Path(options.temp_dir or tempfile.gettempdir())
        needed[temp] = needed.get(temp, 0) + scratch_bytes(inputs.settings, options, runner)
        created += check_outputs(paths, inputs.files, options.overwrite, needed)
        with output_locks(paths):
            return _estimate_and_write(inputs, paths, options, fmt, runner, Path(input_map))
    except BaseException:  # a refused map or an interrupt leaves no folder of ours behind
        remove_empty_folders(created)
        raise
    finally:
        if inputs is not None:
            inputs.close()


def _estimate_and_write(inputs: Inputs, paths: dict[str, Path], options: RunOptions, fmt: str, runner, input_path: Path) -> RunResult:
    from .report import chimerax_script, write_log

    s = inputs.settings
    with estimate_map(
        inputs.source, inputs.info, s, runner, solvent_def=inputs.solvent_def, target_mask=inputs.target_mask, options=options, full=inputs.full
    ) as est:
        written = write_maps(est, paths, runner, fmt)
        modified = [written[modified_name(i)] for i in range(len(s.modifications))]
        if options.plot:
            from .report import save_plots

            written.update(save_plots(est, paths))
        script = (
            chimerax_script(est, paths["chimerax"], input_path, written["scale"], modified, options.min_vis_scale, options.emdb_entry)
            if "chimerax" in paths
            else None
        )
        if script is not None:
            paths["chimerax"].write_text(script, encoding="utf-8")
            written["chimerax"] = paths["chimerax"]
        computed_on = runner.describe()
        listed = {**written, **{key: paths[key] for key in ("log", "report") if key in paths}}  # the log lists the report it precedes
        input_label = None
        if options.emdb_entry is not None:
            from .io.emdb import map_url

            input_label = f"EMD-{options.emdb_entry} ({map_url(options.emdb_entry)})"
        write_log(paths["log"], est, listed, computed_on, options.min_vis_scale, input_label)
        written["log"] = paths["log"]
        if "report" in paths:
            from .html_report import write_report

            write_report(
                paths["report"],
                est,
                input_path,
                written,
                f"Computed on: {computed_on}.",
                input_source=inputs.source,
                min_vis_scale=options.min_vis_scale,
                input_label=input_label,
            )
            written["report"] = paths["report"]
    return RunResult(est, written, list(runner.timings))
