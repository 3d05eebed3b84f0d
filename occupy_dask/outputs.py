"""The files a run writes: their names, checks before writing, and the blockwise writes.

Maps are written by the fused pass's own tasks to temporary names, their header statistics
filled from the same tasks, and renamed into place only when complete. Nothing here does
arithmetic of the method.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import dask.array as da
import numpy as np

from .buffers import release_buffers
from .errors import OutputError, SettingsError
from .estimation import Estimate
from .fused import factor_name, modified_name, store_outputs
from .io.read import MapInfo
from .io.write import FORMATS, format_of, open_output
from .settings import RunOptions, Settings


def output_paths(info: MapInfo, settings: Settings, options: RunOptions, fmt: str = "mrc") -> dict[str, Path]:
    """Every file a run writes, keyed by output name (``scale``, ``confidence``, ``modified_<i>``,
    ``factor_<i>``, ``lowpass``, ``log``, ``chimerax``, ``plot*``); maps in format ``fmt``."""
    name, ext, output_dir = info.name, FORMATS[fmt], Path(options.output_dir)
    paths = {
        "scale": output_dir / f"scale_{settings.scale_mode}_{name}{ext}",
        "confidence": output_dir / f"conf_{name}{ext}",
    }
    mods = settings.modifications
    for i, path in enumerate(modified_paths(settings, name, output_dir, options.output_map, fmt)):
        paths[modified_name(i)] = path
    if options.save_all_maps:
        paths["lowpass"] = output_dir / f"lowpass_{name}{ext}"
        for i, mod in enumerate(mods):
            if mod.kind != "exclude":
                tag = f"{mod.tag}_" if len(mods) > 1 else ""
                paths[factor_name(i)] = output_dir / f"modfactor_{tag}{name}{ext}"
    paths["log"] = output_dir / f"log_{name}.txt"
    if options.save_chimerax and fmt == "mrc":  # ChimeraX opens the MRC outputs; zarr is for napari and friends
        paths["chimerax"] = output_dir / f"chimX_{name}.cxc"
    if options.plot:
        paths["plot"] = output_dir / f"solModel_{name}.png"
        if any(m.kind != "exclude" for m in mods):
            paths["plot_modification"] = output_dir / f"modification_{name}.png"
        if settings.debias:
            paths["plot_noise_floor"] = output_dir / f"noiseFloor_{name}.png"
    return paths


def map_outputs(paths: dict[str, Path]) -> list[str]:
    """The names of ``paths`` that are maps (not the log, script or plots)."""
    return [key for key in paths if key not in ("log", "chimerax") and not key.startswith("plot")]


def resolve_format(output_map: str | os.PathLike | None, fmt: str | None) -> str:
    """The format of the map outputs: ``fmt`` ("mrc", "zarr", "ome.zarr"), else what the ``-o``
    name's suffix says, else MRC. A name whose suffix contradicts ``fmt`` is a usage error."""
    named = format_of(output_map) if output_map else None
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in FORMATS:
            raise SettingsError(f"unknown --format {fmt!r} (mrc, zarr or ome.zarr)")
        if named is not None and named != fmt:
            raise SettingsError(f"--output-map {output_map} is {named}, but --format says {fmt}")
        return fmt
    return named or "mrc"


def modified_paths(settings: Settings, name: str, output_dir: Path, output_map: str | os.PathLike | None, fmt: str = "mrc") -> list[Path]:
    """Where each modified map goes: one modification writes ``-o`` (default ``out_<name>``
    plus the format's suffix); several get the reference's prefixes on that name (``ampl_2.0_``,
    ``attn_2.0_``, ``sigm_2.0-0.30_``, and ``solExcl_`` when solvent is excluded)."""
    mods = settings.modifications
    target = Path(output_map) if output_map else Path(f"out_{name}{FORMATS[fmt]}")
    if format_of(target) is None:
        target = target.with_name(target.name + FORMATS[fmt])
    if not target.is_absolute() and target.parent == Path("."):
        target = output_dir / target
    if len(mods) <= 1:
        return [target] * len(mods)
    excluded = "solExcl_" if settings.exclude_solvent else ""
    return [target.with_name(f"{m.tag}_{excluded}{target.name}") for m in mods]


def check_outputs(paths: dict[str, Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse to write over an input, into a directory that cannot be written, or over an
    existing file unless ``overwrite``."""
    resolved_inputs = {p.resolve() for p in inputs if p is not None}
    for path in paths.values():
        if path.resolve() in resolved_inputs:
            raise OutputError(f"{path}: output would overwrite an input file")
    folders = {p.parent for p in paths.values()}
    for folder in folders:
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                raise OutputError(f"{folder}: cannot create output directory ({exc.strerror})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{folder}: output directory is not writable")
    if not overwrite:
        existing = [p for p in paths.values() if p.exists()]
        if existing:
            raise OutputError(f"{existing[0]}: output exists (use --overwrite to replace it)")


def map_label(est: Estimate, name: str) -> str:
    """Header label of an output map."""
    fixed = {"scale": f"local scale ({est.settings.scale_mode})", "confidence": "confidence", "lowpass": "low-passed input"}
    if name in fixed:
        return fixed[name]
    kind, i = name.rsplit("_", 1)
    what = est.settings.modifications[int(i)].describe()
    if kind == "factor":
        return f"modification factor: {what}"
    return f"{what}, solvent {'excluded' if est.settings.exclude_solvent else 'retained'}"


def write_maps(est: Estimate, paths: dict[str, Path], run, fmt: str = "mrc") -> dict[str, Path]:
    """Write every per-voxel output of ``est`` that has a path, blockwise, to temporary names;
    fill header statistics; rename into place. The fused pass's statistics (the variability
    limit among them) are kept on ``est``. Returns the written paths."""
    names = [n for n in est.output_names if n in paths]
    chunks = est.settings.chunks
    outputs = {}
    try:
        for n in names:
            outputs[n] = open_output(paths[n], fmt, est.info, map_label(est, n), chunks)
        if all(est.has_block_stats(n) for n in names):  # each fused chunk task writes its own outputs
            stats, reduced = run(store_outputs(est.plan, est.sources, {n: outputs[n].target for n in names}), label="local scale")[0], {}
        else:  # a later stage (low-passed modified maps) reads the fused outputs
            arrays = [est[n] if fmt == "mrc" else est[n].rechunk(chunks, method="tasks") for n in names]  # zarr chunks = dask chunks
            store = da.store(arrays, [outputs[n].target for n in names], lock=False, compute=False)
            reductions = {n: _reduction_stats(est[n]) for n in names if not est.has_block_stats(n)}
            _, stats, reduced = run(store, est.block_stats, reductions, label="local scale")
        est.record_block_stats(stats)
        for n in names:
            if n in reduced:
                lo, hi, mean, squares = (float(v) for v in reduced[n])
                header = (lo, hi, mean, math.sqrt(max(squares - mean * mean, 0.0)))
            else:
                header = est.output_moments(n).header_statistics()
            outputs[n].finish(header, run)
        for n in names:
            outputs[n].commit()
    finally:
        for output in outputs.values():
            output.discard()
        getattr(run, "release_buffers", release_buffers)()
    return {n: paths[n] for n in names}


def _reduction_stats(array: da.Array):
    """Lazy (min, max, mean, mean of squares) of a map that the fused pass's statistics do not cover."""
    as64 = array.astype(np.float64)
    return (array.min(), array.max(), as64.mean(), (as64 * as64).mean())
