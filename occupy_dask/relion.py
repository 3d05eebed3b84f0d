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

from .api import RunResult, run_map
from .errors import MapError, SettingsError
from .fused import modified_name
from .io.read import check_same_grid, open_map
from .settings import RunOptions, modifications_from_options

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


MODIFICATION_KEYS = ("amplify", "attenuate", "amplify_amount", "gamma", "sigmoid", "pivot", "exclude_solvent")


def class_settings(settings_options: dict) -> dict:
    """The settings every class runs with: classes are diversified by amplification (amount 1)
    unless the options ask for another modification; exactly one modification per class."""
    options = dict(settings_options)
    if not any(options.get(key) not in (None, False) for key in MODIFICATION_KEYS):
        options["amplify"] = True
    requested = modifications_from_options(**{key: options[key] for key in MODIFICATION_KEYS if key in options})
    if len(requested) != 1:
        raise SettingsError("--relion-classes writes one modified map per class; ask for one modification")
    return options


def check_class_outputs(options: RunOptions) -> None:
    """Class maps are named by the classes and written as MRC files RELION reads."""
    if options.output_map is not None or (options.output_format or "mrc").lower() != "mrc":
        raise SettingsError("--relion-classes names its class maps itself, as MRC files RELION reads; drop -o/--format")


def run_relion_classes(
    star_path: str | os.PathLike, settings_options: dict, options: RunOptions = RunOptions(), runner=None, solvent_def=None, target_mask=None
) -> tuple[list[ClassResult], Path]:
    """Run every class map of a RELION model file with one modification (see
    :func:`class_settings`); returns the per-class results and the new ``_model.star`` (in the
    output directory) that points at the modified class maps."""
    import starfile

    star_path = Path(star_path)
    check_class_outputs(options)
    settings_options = class_settings(settings_options)
    output_dir = Path(options.output_dir)
    blocks, class_paths = read_class_paths(star_path)
    stem = star_path.name.removesuffix(".star").removesuffix("_model")
    new_star = output_dir / f"{stem}_occupy_model.star"
    if new_star.exists() and not options.overwrite:
        raise MapError(f"{new_star}: output exists (use --overwrite to replace it)")
    _check_same_grids(class_paths)
    results = []
    for i, path in enumerate(class_paths, start=1):
        run = run_map(path, options, runner=runner, solvent_def=solvent_def, target_mask=target_mask, **settings_options)
        median, count = _median_confident_scale(run)
        results.append(ClassResult(i, path, run.outputs[modified_name(0)], median, count, run))
    table = blocks[CLASSES_BLOCK].copy()
    table[IMAGE_COLUMN] = [os.path.relpath(r.modified.resolve(), new_star.parent.resolve()) for r in results]
    blocks[CLASSES_BLOCK] = table
    starfile.write(blocks, new_star, overwrite=True)
    if options.report:
        write_class_report(output_dir / f"report_{stem}_classes.html", star_path, results, new_star)
    return results, new_star


def write_class_report(path: Path, star_path: Path, results: list[ClassResult], new_star: Path) -> None:
    """``--report`` with ``--relion-classes``: the class table, each class linked to its own report."""
    import html

    rows = "".join(
        f"<tr><td>{r.index}</td><td>{html.escape(r.source.name)}</td>"
        f"<td>{'n/a' if r.median_scale is None else f'{r.median_scale:.3f}'}</td><td>{r.confident_voxels}</td>"
        f"<td>{html.escape(r.modified.name)}</td>"
        f'<td><a href="{html.escape(r.run.outputs["report"].name)}">report</a></td></tr>'
        for r in results
        if "report" in r.run.outputs
    )
    path.write_text(
        f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>occupy-dask: {html.escape(star_path.name)}</title>
<style>body {{ font-family: sans-serif; margin: 1.5em; }} td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px; }}
table {{ border-collapse: collapse; }}</style></head><body>
<h1>{html.escape(star_path.name)}: {len(results)} classes</h1>
<p>Median local scale inside each class's confident region (confidence above 0.5), and the modified class map
that <code>{html.escape(new_star.name)}</code> points at.</p>
<table><tr><th>class</th><th>map</th><th>median scale</th><th>confident voxels</th><th>modified map</th><th></th></tr>{rows}</table>
</body></html>
""",
        encoding="utf-8",
    )
