"""One run from files to files: open inputs, estimate, write outputs atomically, report.

Used by the CLI and by :func:`occupy_dask.run_map`; nothing here does arithmetic of the method.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from .io.read import MapError, MapInfo, open_map
from .io.write import create_mrc, finish_mrc, partial_path
from .pipeline import Estimate, estimate
from .report import chimerax_script, write_log


class OutputError(RuntimeError):
    """An output that cannot or must not be written."""


@dataclass
class RunResult:
    """What a run wrote and found."""

    estimate: Estimate
    outputs: dict[str, Path]
    variability_limit: float | None
    timings: list[tuple[str, float]] = field(default_factory=list)


def output_paths(info: MapInfo, est_mode: str, output_dir: Path, save_all: bool, chimerax: bool) -> dict[str, Path]:
    name = info.name
    paths = {
        "scale": output_dir / f"scale_{est_mode}_{name}.mrc",
        "confidence": output_dir / f"conf_{name}.mrc",
    }
    if save_all:
        paths["lowpass"] = output_dir / f"lowpass_{name}.mrc"
    paths["log"] = output_dir / f"log_{name}.txt"
    if chimerax:
        paths["chimerax"] = output_dir / f"chimX_{name}.cxc"
    return paths


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


def write_maps(est: Estimate, paths: dict[str, Path], run) -> tuple[dict[str, Path], float | None]:
    """Write every per-voxel output of ``est`` that has a path, blockwise, to temporary names;
    fill header statistics; rename into place. Returns the written paths and the variability limit."""
    names = [n for n in est.output_names if n in paths]
    labels = {
        "scale": f"local scale ({est.settings.scale_mode})",
        "confidence": "confidence",
        "lowpass": "low-passed input",
    }
    partial = {n: partial_path(paths[n]) for n in names}
    try:
        targets = [create_mrc(partial[n], est.info, labels.get(n, n)) for n in names]
        store = da.store([est[n] for n in names], targets, lock=False, compute=False)
        _, stats = run(store, est.block_stats, label="local scale")
        for n in names:
            sums = _combine(stats, n)
            mean = sums.total / sums.n
            rms = math.sqrt(max(sums.squares / sums.n - mean * mean, 0.0))
            finish_mrc(partial[n], sums.lo, sums.hi, mean, rms)
        for n in names:
            os.replace(partial[n], paths[n])
    finally:
        for p in partial.values():
            p.unlink(missing_ok=True)
    count = sum(s["variability"][0] for s in stats)
    total = sum(s["variability"][1] for s in stats)
    variability = (total / count) / est.s_max if count else None
    return {n: paths[n] for n in names}, variability


def run_map(
    input_map: str | os.PathLike,
    settings_factory,
    *,
    output_dir: str | os.PathLike = ".",
    solvent_def: str | os.PathLike | None = None,
    save_all_maps: bool = False,
    save_chimerax: bool = True,
    overwrite: bool = False,
    temp_dir: str | None = None,
    runner=None,
) -> RunResult:
    """Estimate the local scale of one map file and write every output.

    ``settings_factory(info)`` derives the :class:`Settings` from the opened map's geometry.
    """
    from .cluster import Runner

    runner = runner or Runner(quiet=True)
    output_dir = Path(output_dir)
    with open_map(input_map, temp_dir=temp_dir) as mapin:
        info = mapin.info
        settings = settings_factory(info)
        soldef = None
        if solvent_def is not None:
            soldef = open_map(solvent_def, temp_dir=temp_dir, role="solvent definition")
            _check_same_grid(soldef.info, info, "solvent definition")
        try:
            paths = output_paths(info, settings.scale_mode, output_dir, save_all_maps, save_chimerax)
            check_outputs(paths, [Path(input_map), Path(solvent_def) if solvent_def else None], overwrite)
            extra = ("lowpass",) if save_all_maps else ()
            with estimate(
                mapin.source,
                info,
                settings,
                soldef.source if soldef else None,
                run=runner,
                temp_dir=temp_dir,
                extra_outputs=extra,
            ) as est:
                written, variability = write_maps(est, paths, runner)
                write_log(paths["log"], est, variability, written)
                written["log"] = paths["log"]
                if save_chimerax:
                    paths["chimerax"].write_text(chimerax_script(est, Path(input_map), written["scale"], []), encoding="utf-8")
                    written["chimerax"] = paths["chimerax"]
                return RunResult(est, written, variability, list(runner.timings))
        finally:
            if soldef is not None:
                soldef.close()


def _check_same_grid(other: MapInfo, info: MapInfo, role: str) -> None:
    if tuple(other.shape) != tuple(info.shape):
        raise MapError(f"{other.path}: {role} has shape {other.shape}, the map has {info.shape}")
    if not np.allclose(other.voxel_size, info.voxel_size, rtol=1e-3):
        raise MapError(
            f"{other.path}: {role} voxel size {tuple(round(v, 4) for v in other.voxel_size)} Å differs from "
            f"the map's {tuple(round(v, 4) for v in info.voxel_size)} Å"
        )
