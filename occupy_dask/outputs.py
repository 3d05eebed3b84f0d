"""The files a run writes: their names, checks before writing, and the blockwise writes.

Maps are written by the fused pass's own tasks to temporary names, their header statistics
filled from the same tasks, and renamed into place only when complete. Nothing here does
arithmetic of the method.
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import dask.array as da
import numpy as np

from .buffers import background_writer, release_run_buffers
from .errors import OutputError, SettingsError
from .estimation import Estimate
from .fused import factor_name, modified_name, store_outputs, submask_name
from .io.read import MapInfo
from .io.write import FORMATS, format_of, open_output
from .settings import RunOptions, Settings


def output_paths(info: MapInfo, settings: Settings, options: RunOptions, fmt: str = "mrc") -> dict[str, Path]:
    """Every file a run writes, keyed by output name (``scale``, ``confidence``, ``modified_<i>``,
    ``factor_<i>``, ``lowpass``, ``log``, ``chimerax``, ``plot*``); maps in format ``fmt``."""
    name, ext, output_dir = options.name or info.name, FORMATS[fmt], Path(options.output_dir)
    naive = "naive_" if settings.s0 else ""  # the reference's name for the S0 scale
    paths = {
        "scale": output_dir / f"scale_{naive}{settings.scale_mode}_{name}{ext}",
        "confidence": output_dir / f"conf_{name}{ext}",
    }
    mods = settings.modifications
    for i, path in enumerate(modified_paths(settings, name, output_dir, options.output_map, fmt)):
        paths[modified_name(i)] = path
    for i, mod in enumerate(mods):
        if settings.subtraction_masks and mod.removes_density:
            paths[submask_name(i)] = output_dir / f"{subtraction_mask_stem(mod)}_{name}{ext}"
    if options.save_all_maps:
        paths["lowpass"] = output_dir / f"lowpass_{name}{ext}"
        for i, mod in enumerate(mods):
            if mod.kind != "exclude":
                tag = f"{mod.tag}_" if len(mods) > 1 else ""
                paths[factor_name(i)] = output_dir / f"modfactor_{tag}{name}{ext}"
    paths["log"] = output_dir / f"log_{name}.txt"
    if options.save_chimerax and fmt == "mrc":  # ChimeraX opens the MRC outputs; zarr is for napari and friends
        paths["chimerax"] = output_dir / f"chimX_{name}.cxc"
    if options.report:
        paths["report"] = output_dir / f"report_{name}.html"
    if options.plot:
        paths["plot"] = output_dir / f"solModel_{name}.png"
        if any(m.kind != "exclude" for m in mods):
            paths["plot_modification"] = output_dir / f"modification_{name}.png"
        if settings.debias:
            paths["plot_noise_floor"] = output_dir / f"noiseFloor_{name}.png"
    return paths


def subtraction_mask_stem(mod) -> str:
    """The OccuPy GUI's name of a subtraction mask: ``subtraction_mask_attn_<gamma>`` or
    ``subtraction_mask_sigm_<pivot>.<power>``."""
    if mod.kind == "sigmoid":
        return f"subtraction_mask_sigm_{mod.pivot:g}.{mod.power:g}"
    return f"subtraction_mask_attn_{1.0 + mod.exponent:g}"


def map_outputs(paths: dict[str, Path]) -> list[str]:
    """The names of ``paths`` that are maps (not the log, script or plots)."""
    return [key for key in paths if key not in ("log", "chimerax", "report") and not key.startswith("plot")]


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
        if target.suffix and not target.suffix[1:].isdigit():  # a name like 'map_1.5' has no format suffix
            raise SettingsError(f"-o {output_map}: {target.suffix} is not a map format; name the file .mrc, .map, .ccp4, .zarr or .ome.zarr")
        target = target.with_name(target.name + FORMATS[fmt])
    if not target.is_absolute():  # relative: inside the output directory, and never above it
        if ".." in target.parts:
            raise SettingsError(
                f"-o {output_map} leaves --output-dir {output_dir}; a relative -o is inside it, give an absolute path to write elsewhere"
            )
        target = output_dir / target
    if len(mods) <= 1:
        return [target] * len(mods)
    excluded = "solExcl_" if settings.exclude_solvent else ""
    return [target.with_name(f"{m.tag}_{excluded}{target.name}") for m in mods]


def check_outputs(paths: dict[str, Path], inputs: list[Path], overwrite: bool, needed: dict[Path, int] | None = None) -> list[Path]:
    """Refuse to write over an input, over an existing file unless ``overwrite``, into a folder
    that cannot be written, or onto a filesystem without room for ``needed`` (bytes per folder
    the run will write into). Creates the missing output folders and returns them, outermost
    first, so that a run that fails can remove them again."""
    resolved_inputs = {p.resolve() for p in inputs if p is not None}
    for path in paths.values():
        if path.resolve() in resolved_inputs:
            raise OutputError(f"{path}: output would overwrite an input file")
    if not overwrite:
        existing = [p for p in paths.values() if p.exists()]
        if existing:
            raise OutputError(f"{existing[0]}: output exists (use --overwrite to replace it)")
    check_free_space(needed or {})
    return make_folders({p.parent for p in paths.values()})


def make_folders(folders) -> list[Path]:
    """Create the output folders that do not exist and check that each can be written; returns
    the folders created, outermost first (none are left when this fails)."""
    created: list[Path] = []
    for folder in sorted(folders):
        missing = [f for f in (folder, *folder.parents) if not f.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            remove_empty_folders(created)
            raise OutputError(f"{folder}: cannot create output directory ({exc.strerror})") from None
        created += [f for f in reversed(missing) if f not in created]
        if not os.access(folder, os.W_OK | os.X_OK):
            remove_empty_folders(created)
            raise OutputError(f"{folder}: output directory is not writable")
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove the folders a failed run created (innermost first), where nothing else was put."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: left as it is
            pass


def output_bytes(paths: dict[str, Path], shape, fmt: str) -> dict[Path, int]:
    """Bytes the map outputs need at most, per folder (compressed formats counted uncompressed;
    OME-Zarr with its 2x and 4x levels)."""
    per_map = 4 * math.prod(shape) * (1 + 1 / 8 + 1 / 64 if fmt == "ome.zarr" else 1) + 1024
    needed: dict[Path, int] = {}
    for name in map_outputs(paths):
        needed[paths[name].parent] = needed.get(paths[name].parent, 0) + int(per_map)
    return needed


def check_free_space(needed: dict[Path, int]) -> None:
    """One clear error when a filesystem has less free space than the run will write onto it
    (folders on one filesystem add up)."""
    by_device: dict[int, tuple[Path, int]] = {}
    for folder, nbytes in needed.items():
        existing = next(f for f in (folder, *folder.parents) if f.exists())
        device = existing.stat().st_dev
        where, total = by_device.get(device, (existing, 0))
        by_device[device] = (where, total + nbytes)
    for where, nbytes in by_device.values():
        free = shutil.disk_usage(where).free
        if nbytes > free:
            raise OutputError(
                f"{where}: not enough free space: this run writes up to {nbytes / 1e9:.2f} GB there (outputs and temporary stores), "
                f"{free / 1e9:.2f} GB are free; free some space, or use --output-dir / --temp-dir elsewhere"
            )


def lock_path(path: Path) -> Path:
    """The lock file of an output while a run writes it."""
    return path.with_name(f".{path.name}.occupy-lock")


@contextmanager
def output_locks(paths: dict[str, Path]):
    """Hold a lock on every output for the run: a second run writing the same files at the same
    time is refused at once; runs with other names go side by side. Each lock is a hidden file
    beside its output (``.<name>.occupy-lock``), removed when the run ends; the kernel releases a
    lock whose run dies, and a lock file removed under a waiting run is never trusted."""
    import fcntl

    held = []
    try:
        for path in sorted(set(paths.values())):
            lock = lock_path(path)
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise OutputError(f"{path}: another occupy-dask run is writing this output now; wait for it, or use another -d or -o") from None
                try:
                    same = os.stat(lock).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    held.append((lock, fd))
                    break
                os.close(fd)  # the run before removed that file as this one took it: take the new one
        yield
    finally:
        for lock, fd in reversed(held):
            lock.unlink(missing_ok=True)
            os.close(fd)


def output_kind(name: str, est: Estimate) -> str:
    """An output in words, for the console and the log: ``modified map (amplified, amount 1)``."""
    fixed = {
        "scale": "scale map",
        "confidence": "confidence map",
        "lowpass": "low-passed input",
        "log": "log",
        "chimerax": "ChimeraX script",
        "report": "HTML report",
        "plot": "solvent model plot",
        "plot_modification": "modification plot",
        "plot_noise_floor": "noise floor plot",
    }
    if name in fixed:
        return fixed[name]
    kind, i = name.rsplit("_", 1)
    what = est.settings.modifications[int(i)].describe()
    words = {"factor": "modification factor", "submask": "subtraction mask"}
    return f"{words.get(kind, 'modified map')} ({what})"


def map_label(est: Estimate, name: str) -> str:
    """Header label of an output map."""
    fixed = {"scale": f"local scale ({est.settings.scale_mode})", "confidence": "confidence", "lowpass": "low-passed input"}
    if name in fixed:
        return fixed[name]
    kind, i = name.rsplit("_", 1)
    what = est.settings.modifications[int(i)].describe()
    if kind == "factor":
        return f"modification factor: {what}"
    if kind == "submask":
        return f"subtraction mask: {what}"
    return f"{what}, solvent {'excluded' if est.settings.exclude_solvent else 'retained'}"


def write_maps(est: Estimate, paths: dict[str, Path], run, fmt: str = "mrc") -> dict[str, Path]:
    """Write every per-voxel output of ``est`` that has a path, blockwise, to temporary names;
    fill header statistics; rename into place. The fused pass's statistics (the variability
    limit among them) are kept on ``est``. Returns the written paths."""
    names = [n for n in est.output_names if n in paths]
    outputs = {}
    try:
        for n in names:
            info, chunks = est.grid_of(n)
            outputs[n] = open_output(paths[n], fmt, info, map_label(est, n), chunks)
        if all(est.has_block_stats(n) for n in names):  # each fused chunk task writes its own outputs
            # tasks in this process leave their writes to its writer thread, which writes while they
            # compute: MRC slabs, one positioned write each (I/O); cubes (page faults of a mapping)
            # and zarr chunks (compression) cost CPU and are written by the tasks, on every core
            s = est.settings
            behind = not getattr(run, "distributed", False) and fmt == "mrc" and s.slabs
            with background_writer(behind) as key:
                stats = run(store_outputs(est.plan, est.sources, {n: outputs[n].target for n in names}, write_behind=key), label="local scale")[0]
            reduced = {}
        else:  # a later stage (low-passed modified maps) reads the fused outputs
            arrays = [est[n] if fmt == "mrc" else est[n].rechunk(est.grid_of(n)[1], method="tasks") for n in names]  # zarr chunks = dask chunks
            store = da.store(arrays, [outputs[n].target for n in names], lock=False, compute=False)
            reductions = {n: _reduction_stats(est[n]) for n in names if not est.has_block_stats(n)}
            # the delayed statistics first: dask (2026.8) can hand a delayed listed after a store the result of another object
            stats, _, reduced = run(est.block_stats, store, reductions, label="local scale")
            if not isinstance(stats, list):
                raise RuntimeError(f"internal error: the fused pass's statistics came back as {type(stats).__name__}")
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
        release_run_buffers(run)
    return {n: paths[n] for n in names}


def _reduction_stats(array: da.Array):
    """Lazy (min, max, mean, mean of squares) of a map that the fused pass's statistics do not cover."""
    as64 = array.astype(np.float64)
    return (array.min(), array.max(), as64.mean(), (as64 * as64).mean())
