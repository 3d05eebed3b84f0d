"""``--relion-classes``: estimate and modify every class map of a RELION ``_model.star``.

The ``data_model_classes`` table's ``rlnReferenceImage`` paths are resolved relative to the
star file (RELION writes them relative to its project directory, which is tried next). Each
class is run with the same settings; a new ``_model.star`` points at the modified classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .api import RunResult, run_map
from .errors import MapError, SettingsError
from .fused import modified_name
from .io.read import check_same_grid, map_name, open_map
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


def read_class_paths(star_path: Path) -> tuple[dict, list[Path], Path]:
    """The star file's blocks, the resolved class map paths and the RELION project folder they
    are relative to; MapError when unusable. RELION writes ``rlnReferenceImage`` relative to its
    project folder (``Class3D/job010/...``): the folder is the star file's own or the first of its
    parents, or the current directory, where the paths exist."""
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
    names = [str(name) for name in table[IMAGE_COLUMN]]
    stacked = [name for name in names if "@" in name]
    if stacked:
        raise MapError(
            f"{star_path}: {stacked[0]} is an image in a stack (2D classes or particles), not a 3D map; "
            "--relion-classes takes the _model.star of a 3D classification or refinement"
        )
    roots = [star_path.parent.absolute(), *star_path.parent.absolute().parents, Path.cwd()]
    project = next((root for root in roots if all((root / name).is_file() for name in names)), None)
    if project is None:
        missing = next(name for name in names if not any((root / name).is_file() for root in roots))
        raise MapError(f"{star_path}: class map {missing} not found (looked in the star file's folder, its parents and the current directory)")
    return blocks, [project / name for name in names], project


def _check_same_grids(class_paths: list[Path]) -> None:
    """Refuse, before running any, class maps whose box or voxel size differ from the first's."""
    with open_map(class_paths[0], role="class map") as first:
        for path in class_paths[1:]:
            with open_map(path, role="class map") as other:
                check_same_grid(other.info, first.info, f"class map (unlike {class_paths[0].name})")


def _check_class_outputs(class_paths: list[Path], per_class: list[RunOptions], settings_options: dict) -> None:
    """Before any class runs: no two classes write the same file, and (without --overwrite) no
    class would write over an existing one."""
    from .outputs import output_paths
    from .settings import derive_settings

    seen: dict[Path, Path] = {}
    for path, options in zip(class_paths, per_class):
        with open_map(path, role="class map") as opened:
            settings = derive_settings(opened.info.shape, opened.info.voxel_size, **settings_options)
            for output in output_paths(opened.info, settings, options).values():
                if output in seen:
                    raise MapError(f"{path} and {seen[output]} would both write {output}")
                seen[output] = path
                if output.exists() and not options.overwrite:
                    raise MapError(f"{output}: output exists (use --overwrite to replace it); no class was run")


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
    blocks, class_paths, project = read_class_paths(star_path)
    stem = star_path.name.removesuffix(".star").removesuffix("_model")
    new_star = output_dir / f"{stem}_occupy_model.star"
    if new_star.exists() and not options.overwrite:
        raise MapError(f"{new_star}: output exists (use --overwrite to replace it)")
    _check_same_grids(class_paths)
    names = [map_name(p) for p in class_paths]
    # classes whose maps share a file name (in different folders) get the class number in their outputs' names
    per_class = [replace(options, name=f"{n}_class{i:03d}" if names.count(n) > 1 else None) for i, n in enumerate(names, start=1)]
    _check_class_outputs(class_paths, per_class, settings_options)
    results = []
    for i, (path, class_options) in enumerate(zip(class_paths, per_class), start=1):
        run = run_map(path, class_options, runner=runner, solvent_def=solvent_def, target_mask=target_mask, **settings_options)
        median, count = _median_confident_scale(run)
        results.append(ClassResult(i, path, run.outputs[modified_name(0)], median, count, run))
    table = blocks[CLASSES_BLOCK].copy()
    table[IMAGE_COLUMN] = [os.path.relpath(r.modified.absolute(), project) for r in results]  # as RELION writes them
    blocks[CLASSES_BLOCK] = table
    starfile.write(blocks, new_star, overwrite=True)
    version = next((line for line in star_path.read_text(errors="replace").splitlines() if line.startswith("# version")), None)
    if version is not None:  # starfile drops the comment RELION reads the format version from
        new_star.write_text(f"\n{version}\n{new_star.read_text()}")
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
