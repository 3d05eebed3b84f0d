"""Python API: estimate from a path, a numpy array or a dask array; write separately."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np

from .io.read import ArraySource, MapError, MapInfo, ZarrSource, check_same_grid, open_map
from .pipeline import IN_MEMORY_LOWPASS_BYTES, Estimate, modify_lazy
from .pipeline import estimate as _estimate
from .run import check_outputs, output_paths, resolve_format, write_maps
from .settings import Settings, SettingsError, check_scale_limit, derive_settings, modifications_from_options


def _array_source(data, temp_dir: str | None, distributed: bool = False):
    """A source for an in-memory or lazy array; large dask arrays, and any array that workers in
    other processes must read, are spilled to a temporary zarr."""
    if distributed and not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data, dtype=np.float32), chunks=(64, -1, -1))
    if isinstance(data, da.Array):
        if data.nbytes <= IN_MEMORY_LOWPASS_BYTES and not distributed:
            return ArraySource(np.ascontiguousarray(data.compute(), dtype=np.float32)), None
        import zarr

        folder = Path(tempfile.mkdtemp(prefix="occupy_dask_input_", dir=temp_dir)).absolute()
        path = str(folder / "input.zarr")
        chunks = tuple(c[0] for c in data.chunks)
        try:
            z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype="float32", fill_value=0.0)
            da.store(data.astype(np.float32), z, lock=False)
        except BaseException:  # the caller never learns of the folder
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return ZarrSource(path, tuple(data.shape)), folder
    return ArraySource(np.ascontiguousarray(data, dtype=np.float32)), None


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
    """Estimate local scale and confidence (ALGORITHM.md sections 1-7).

    ``data`` is a map path (MRC/CCP4, optionally gzip), or a 3D numpy/dask array in (z, y, x)
    order with ``voxel_size`` in Å. ``solvent_def`` and ``target_mask`` (paths or arrays on the
    same grid) are the solvent definition and the mask whose occupancy is reported as
    ``target_occupancy`` (ALGORITHM.md section 9). ``options`` are :func:`derive_settings` keywords
    (``resolution``, ``lowpass``, ``kernel_size``, ``tile_size``, ``occupancy``, ``chunks``, ...).
    The global numbers (``s_max``, solvent model, limits) are computed now; ``scale`` and
    ``confidence_map`` are lazy dask arrays. Use it as a context manager, or call ``close()``.
    With a distributed ``client`` the reductions run on its cluster (compute the lazy maps there
    too); arrays and the low-passed map are then kept in temporary zarr stores under ``temp_dir``,
    which must be reachable by the workers.
    """
    from .cluster import Runner

    cleanups = []
    if client is not None:
        run = Runner(client=client, quiet=True)
    distributed = getattr(run, "distributed", False)

    def spilled(data):
        source, folder = _array_source(data, temp_dir, distributed)
        if folder is not None:
            cleanups.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        return source

    if isinstance(data, (str, os.PathLike)):
        mapin = open_map(data, temp_dir=temp_dir)
        cleanups.append(mapin.close)
        info, source = mapin.info, mapin.source
        if voxel_size is not None:
            info.voxel_size = tuple(np.broadcast_to(np.asarray(voxel_size, float), (3,)))
    else:
        if np.ndim(data) != 3:
            raise ValueError(f"a 3D volume is needed, got an array of shape {np.shape(data)}")
        source = spilled(data)
        vs = 1.0 if voxel_size is None else voxel_size
        info = MapInfo(
            path=None,
            name="map",
            shape=tuple(int(n) for n in np.shape(data)),
            voxel_size=tuple(float(v) for v in np.broadcast_to(np.asarray(vs, float), (3,))),
        )

    def mask_source(mask, role):
        if mask is None:
            return None
        if isinstance(mask, (str, os.PathLike)):  # a file: shape and voxel size must match the map's
            opened = open_map(mask, temp_dir=temp_dir, role=role)
            cleanups.append(opened.close)
            check_same_grid(opened.info, info, role)
            return opened.source
        source = spilled(mask)
        if tuple(source.shape) != tuple(info.shape):
            raise MapError(f"{role} has shape {tuple(source.shape)}, the map has {tuple(info.shape)}")
        return source

    try:
        soldef_source = mask_source(solvent_def, "solvent definition")
        target_source = mask_source(target_mask, "target mask")
        if settings is None:
            settings = derive_settings(info.shape, info.voxel_size, **options)
        kwargs = {} if run is None else {"run": run}
        est = _estimate(
            source, info, settings, soldef_source, target_mask_source=target_source, temp_dir=temp_dir, allow_nonfinite=allow_nonfinite, **kwargs
        )
    except BaseException:
        for fn in cleanups:
            fn()
        raise
    est.cleanup.extend(cleanups)
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
    """The input map modified by its local scale (ALGORITHM.md section 8), lazily.

    Give one modification: ``amount`` (amplify with ``a`` in [-1, 1]; negative attenuates),
    ``gamma`` (with ``attenuate=True`` for attenuation), ``attenuate=True`` alone (amount -1),
    ``sigmoid`` with ``pivot``, or only ``exclude_solvent=True``. Unset options keep the
    estimate's settings. Returns a float32 dask array in stored axis order, clipped to the
    input's range; compute it while ``est`` is open.
    """
    s = est.settings
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
    return modify_lazy(
        est,
        mods[0],
        exclude_solvent=exclude,
        scale_limit=limit,
        lowpass_output=lowpass_output,
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
    suffix); on ``client``'s cluster when given."""
    from .cluster import Runner

    fmt = resolve_format(output_map, output_format)
    paths = output_paths(est.info, est.settings, Path(output_dir), output_map=output_map, chimerax=False, fmt=fmt)
    paths = {k: v for k, v in paths.items() if k in est.output_names}
    inputs = [est.info.path] if est.info.path is not None else []
    check_outputs(paths, inputs, overwrite)
    runner = Runner(client=client, quiet=True) if client is not None else run or Runner(quiet=True)
    written, _ = write_maps(est, paths, runner, fmt)
    return written
