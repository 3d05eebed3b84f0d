"""One run from files to files: open inputs, estimate, write outputs atomically, report.

Used by the CLI and by :func:`occupy_dask.run_map`; nothing here does arithmetic of the method.
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from .buffers import release_buffers
from .io.read import MapInfo, check_same_grid, open_map
from .io.write import FORMATS, format_of, open_output
from .pipeline import Estimate, estimate, factor_name, modified_name, store_outputs
from .report import chimerax_script, write_log
from .settings import Settings, SettingsError


class OutputError(RuntimeError):
    """An output that cannot or must not be written."""


@dataclass
class RunResult:
    """What a run wrote and found."""

    estimate: Estimate
    outputs: dict[str, Path]
    variability_limit: float | None
    timings: list[tuple[str, float]] = field(default_factory=list)


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


def output_paths(
    info: MapInfo,
    settings: Settings,
    output_dir: Path,
    *,
    output_map: str | os.PathLike | None = None,
    save_all: bool = False,
    chimerax: bool = True,
    plot: bool = False,
    fmt: str = "mrc",
) -> dict[str, Path]:
    """Every file a run writes, keyed by output name (``modified_<i>``, ``factor_<i>``, ...);
    maps in format ``fmt``."""
    name = info.name
    ext = FORMATS[fmt]
    paths = {
        "scale": output_dir / f"scale_{settings.scale_mode}_{name}{ext}",
        "confidence": output_dir / f"conf_{name}{ext}",
    }
    mods = settings.modifications
    for i, path in enumerate(modified_paths(settings, name, output_dir, output_map, fmt)):
        paths[modified_name(i)] = path
    if save_all:
        paths["lowpass"] = output_dir / f"lowpass_{name}{ext}"
        for i, mod in enumerate(mods):
            if mod.kind != "exclude":
                tag = f"{mod.tag}_" if len(mods) > 1 else ""
                paths[factor_name(i)] = output_dir / f"modfactor_{tag}{name}{ext}"
    paths["log"] = output_dir / f"log_{name}.txt"
    if chimerax and fmt == "mrc":  # ChimeraX opens the MRC outputs; zarr is for napari and friends
        paths["chimerax"] = output_dir / f"chimX_{name}.cxc"
    if plot:
        paths["plot"] = output_dir / f"solModel_{name}.png"
        if any(m.kind != "exclude" for m in mods):
            paths["plot_modification"] = output_dir / f"modification_{name}.png"
        if settings.debias:
            paths["plot_noise_floor"] = output_dir / f"noiseFloor_{name}.png"
    return paths


def _label(est: Estimate, name: str) -> str:
    """Header label of an output map."""
    fixed = {"scale": f"local scale ({est.settings.scale_mode})", "confidence": "confidence", "lowpass": "low-passed input"}
    if name in fixed:
        return fixed[name]
    kind, i = name.rsplit("_", 1)
    mod = est.settings.modifications[int(i)]
    what = {"amplify": f"amplified, amount {mod.amount:.3g}", "attenuate": f"attenuated, amount {mod.amount:.3g}"}.get(mod.kind)
    if mod.kind == "sigmoid":
        what = f"sigmoid power {mod.power:g} pivot {mod.pivot:g}"
    elif mod.kind == "exclude":
        what = "input"
    if kind == "factor":
        return f"modification factor: {what}"
    return f"{what}, solvent {'excluded' if est.settings.exclude_solvent else 'retained'}"


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


def _combine(stats: list[dict], key: str):
    total = None
    for item in stats:
        total = item[key] if total is None else total + item[key]
    return total


def _reduction_stats(array: da.Array):
    """Lazy (min, max, mean, mean of squares) of a map that the fused pass's statistics do not cover."""
    as64 = array.astype(np.float64)
    return (array.min(), array.max(), as64.mean(), (as64 * as64).mean())


def write_maps(est: Estimate, paths: dict[str, Path], run, fmt: str = "mrc") -> tuple[dict[str, Path], float | None]:
    """Write every per-voxel output of ``est`` that has a path, blockwise, to temporary names;
    fill header statistics; rename into place. Returns the written paths and the variability limit."""
    names = [n for n in est.output_names if n in paths]
    chunks = est.settings.chunks
    outputs = {}
    try:
        for n in names:
            outputs[n] = open_output(paths[n], fmt, est.info, _label(est, n), chunks)
        if all(est.has_block_stats(n) for n in names):  # each fused chunk task writes its own outputs
            stats, reduced = run(store_outputs(est, {n: outputs[n].target for n in names}), label="local scale")[0], {}
        else:  # a later stage (low-passed modified maps) reads the fused outputs
            arrays = [est[n] if fmt == "mrc" else est[n].rechunk(chunks, method="tasks") for n in names]  # zarr chunks = dask chunks
            store = da.store(arrays, [outputs[n].target for n in names], lock=False, compute=False)
            reductions = {n: _reduction_stats(est[n]) for n in names if not est.has_block_stats(n)}
            _, stats, reduced = run(store, est.block_stats, reductions, label="local scale")
        for n in names:
            if n in reduced:
                lo, hi, mean, squares = (float(v) for v in reduced[n])
            else:
                sums = _combine(stats, n)
                lo, hi, mean, squares = sums.lo, sums.hi, sums.total / sums.n, sums.squares / sums.n
            outputs[n].finish((lo, hi, mean, math.sqrt(max(squares - mean * mean, 0.0))), run)
        for n in names:
            outputs[n].commit()
    finally:
        for output in outputs.values():
            output.discard()
        getattr(run, "release_buffers", release_buffers)()
    count = sum(s["variability"][0] for s in stats)
    total = sum(s["variability"][1] for s in stats)
    variability = (total / count) / est.s_max if count else None
    return {n: paths[n] for n in names}, variability


def run_map(
    input_map: str | os.PathLike,
    settings_factory,
    *,
    output_dir: str | os.PathLike = ".",
    output_map: str | os.PathLike | None = None,
    solvent_def: str | os.PathLike | None = None,
    target_mask: str | os.PathLike | None = None,
    save_all_maps: bool = False,
    save_chimerax: bool = True,
    plot: bool = False,
    overwrite: bool = False,
    temp_dir: str | None = None,
    allow_nonfinite: bool = False,
    output_format: str | None = None,
    runner=None,
) -> RunResult:
    """Estimate the local scale of one map file, modify it as the settings ask, write every output.

    ``settings_factory(info)`` derives the :class:`Settings` from the opened map's geometry.
    ``output_format`` is "mrc", "zarr" or "ome.zarr" (default: from ``output_map``'s suffix, else
    MRC). On a distributed ``runner`` temporary stores go to the output directory unless
    ``temp_dir`` says otherwise, since workers elsewhere must reach them.
    """
    from .cluster import Runner

    runner = runner or Runner(quiet=True)
    output_dir = Path(output_dir)
    fmt = resolve_format(output_map, output_format)
    if temp_dir is None and runner.distributed:
        output_dir.mkdir(parents=True, exist_ok=True)
        temp_dir = str(output_dir.absolute())
    with ExitStack() as stack:
        mapin = stack.enter_context(open_map(input_map, temp_dir=temp_dir))
        info = mapin.info
        settings = settings_factory(info)
        masks = {}
        for role, path in (("solvent definition", solvent_def), ("target mask", target_mask)):
            if path is not None:
                masks[role] = stack.enter_context(open_map(path, temp_dir=temp_dir, role=role))
                check_same_grid(masks[role].info, info, role)
        paths = output_paths(info, settings, output_dir, output_map=output_map, save_all=save_all_maps, chimerax=save_chimerax, plot=plot, fmt=fmt)
        check_outputs(paths, [Path(input_map), *(Path(p) for p in (solvent_def, target_mask) if p)], overwrite)
        n_maps = sum(1 for key in paths if key not in ("log", "chimerax") and not key.startswith("plot"))
        runner.check_memory(settings.chunks, settings.halo, n_maps)
        extra = ("lowpass", "factor") if save_all_maps else ()
        est = stack.enter_context(
            estimate(
                mapin.source,
                info,
                settings,
                masks["solvent definition"].source if solvent_def else None,
                target_mask_source=masks["target mask"].source if target_mask else None,
                run=runner,
                temp_dir=temp_dir,
                extra_outputs=extra,
                allow_nonfinite=allow_nonfinite,
            )
        )
        written, variability = write_maps(est, paths, runner, fmt)
        modified = [written[modified_name(i)] for i in range(len(settings.modifications))]
        if plot:
            from .report import save_plots

            written.update(save_plots(est, paths))
        write_log(paths["log"], est, variability, {**written, "log": paths["log"]}, runner.describe())
        written["log"] = paths["log"]
        if "chimerax" in paths:
            paths["chimerax"].write_text(chimerax_script(est, Path(input_map), written["scale"], modified), encoding="utf-8")
            written["chimerax"] = paths["chimerax"]
        return RunResult(est, written, variability, list(runner.timings))
