"""``--relion-classes``: estimate and modify every class map of a RELION ``_model.star``.

The ``data_model_classes`` table's ``rlnReferenceImage`` paths are resolved relative to the
star file (RELION writes them relative to its project directory, which is tried next). Each
class is run with the same settings; a new ``_model.star`` points at the modified classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.read import MapError, check_same_grid, open_map
from .pipeline import modified_name
from .run import RunResult, run_map
from .settings import SettingsError

CLASSES_BLOCK = "model_classes"
IMAGE_COLUMN = "rlnReferenceImage"


@dataclass
class ClassResult:
    """One class map: where it came from, what was written, its median confident scale."""

    index: int
    source: Path
    modified: Path
    median_scale: float | None  # median scale where confidence > 0.5 (None: no confident voxel)
    confident_voxels: int
    run: RunResult


def read_class_paths(star_path: Path) -> tuple[dict, list[Path]]:
    """The star file's blocks and the resolved class map paths; MapError when unusable."""
    import starfile

    star_path = Path(star_path)
    if not star_path.is_file():
        raise MapError(f"{star_path}: RELION model file not found")
    try:
        blocks = starfile.read(star_path, always_dict=True)
    except Exception as exc:  # the library raises many kinds on malformed text
        raise MapError(f"{star_path}: not a readable STAR file ({exc})") from None
    table = blocks.get(CLASSES_BLOCK)
    if table is None or not hasattr(table, "columns") or IMAGE_COLUMN not in table.columns:
        raise MapError(f"{star_path}: no data_{CLASSES_BLOCK} table with {IMAGE_COLUMN} (is this a RELION *_model.star?)")
    paths = []
    for name in table[IMAGE_COLUMN]:
        name = str(name).split("@")[-1]  # "000001@stack.mrcs" style references name a file too
        candidates = [star_path.parent / name, Path(name), star_path.parent / Path(name).name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise MapError(f"{star_path}: class map {name} not found (looked relative to the star file and the current directory)")
        paths.append(found)
    return blocks, paths


def _check_same_grids(class_paths: list[Path]) -> None:
    """Refuse, before running any, class maps whose box or voxel size differ from the first's."""
    with open_map(class_paths[0], role="class map") as first:
        for path in class_paths[1:]:
            with open_map(path, role="class map") as other:
                check_same_grid(other.info, first.info, f"class map (unlike {class_paths[0].name})")


def _median_confident_scale(result: RunResult) -> tuple[float | None, int]:
    """Median of the written scale map where the written confidence exceeds 0.5."""
    import mrcfile

    with mrcfile.mmap(result.outputs["scale"], mode="r") as scale, mrcfile.mmap(result.outputs["confidence"], mode="r") as conf:
        values = np.asarray(scale.data)[np.asarray(conf.data) > 0.5]
    return (float(np.median(values)) if values.size else None), int(values.size)


def run_relion_classes(
    star_path: str | os.PathLike,
    settings_factory,
    *,
    output_dir: str | os.PathLike = ".",
    runner=None,
    **run_options,
) -> tuple[list[ClassResult], Path]:
    """Run every class map of a RELION model file; returns the per-class results and the new
    ``_model.star`` (in ``output_dir``) that points at the modified class maps.

    ``settings_factory(info)`` must ask for exactly one modification (the CLI asks for
    amplification, amount 1, when the user chose none).
    """
    import starfile

    star_path = Path(star_path)
    output_dir = Path(output_dir)
    blocks, class_paths = read_class_paths(star_path)
    stem = star_path.name.removesuffix(".star").removesuffix("_model")
    new_star = output_dir / f"{stem}_occupy_model.star"
    if new_star.exists() and not run_options.get("overwrite", False):
        raise MapError(f"{new_star}: output exists (use --overwrite to replace it)")
    _check_same_grids(class_paths)
    results = []
    for i, path in enumerate(class_paths, start=1):
        run = run_map(path, settings_factory, output_dir=output_dir, runner=runner, **run_options)
        if len(run.estimate.settings.modifications) != 1:
            raise SettingsError("--relion-classes needs exactly one modification per class")
        median, count = _median_confident_scale(run)
        results.append(ClassResult(i, path, run.outputs[modified_name(0)], median, count, run))
    table = blocks[CLASSES_BLOCK].copy()
    table[IMAGE_COLUMN] = [os.path.relpath(r.modified.resolve(), new_star.parent.resolve()) for r in results]
    blocks[CLASSES_BLOCK] = table
    starfile.write(blocks, new_star, overwrite=True)
    return results, new_star
