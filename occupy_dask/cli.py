"""The ``occupy-dask`` command: flags -> settings -> pipeline -> outputs and report.

Exit codes: 0 success, 2 usage error, 1 processing error (one line; traceback with --verbose).
"""

from __future__ import annotations

import gc
import traceback
from pathlib import Path

import typer

from .errors import OccupyError, UsageError
from .version import __version__

app = typer.Typer(add_completion=False, rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        typer.echo(f"occupy-dask {__version__}")
        raise typer.Exit()


def _without_dask_docstrings() -> None:
    """Leave dask.array's functions their own docstrings, before it is imported: as it imports,
    it builds each of about 300 from numpy's (dask's ``derived_from``), 60-70 ms of its 0.17 s
    here, for help pages that a command-line run never shows. Nothing else reads them; a dask
    without this helper is left as it is."""
    import sys

    if "dask.array" in sys.modules:  # built already (a test process, or the Python API before)
        return
    import dask.utils

    if callable(getattr(dask.utils, "_derived_from", None)):
        dask.utils._derived_from = _own_docstring


def _own_docstring(cls, method, *args, extra: str = "", **kwargs) -> str:
    return extra


def _warm_memory(input_map: Path, max_box: int | None, local: bool, threads: int | None = None) -> None:
    """Fault in the memory this run will write first (see :func:`occupy_dask.buffers.warm_memory`)
    while the method's modules are imported, when the run keeps its low-passed map in memory
    (local threads without a memory limit, a plain MRC map of at most IN_MEMORY_BYTES as
    float32, no ``--max-box`` preview) and has room to spare (WARM_ROOM): that map's mapping,
    and the heap that such a run's low-pass and passes use at least (HEAP_SHARE of the map's
    bytes, half that on one thread). A guess that proves wrong costs the reservation, which the
    low-pass drops, and heap the run would not otherwise have used."""
    import math
    import os

    from .buffers import IN_MEMORY_BYTES, memory_limit, warm_memory
    from .io.peek import mrc_box

    box = mrc_box(input_map) if local and not str(input_map).endswith(".gz") else None
    if box is None or (max_box is not None and max(box) > max_box):
        return
    map_bytes = 4 * math.prod(box)
    # a map kept on disk; or a tight limit, where memory written early pushes the input out of the page cache
    if map_bytes > IN_MEMORY_BYTES or memory_limit() < WARM_ROOM * map_bytes + (1 << 30):
        return
    share = HEAP_SHARE if (threads or os.cpu_count() or 1) > 1 else HEAP_SHARE / 2
    warm_memory(map_bytes, int(share * map_bytes))


# The heap that a run keeping its map in memory writes at least, as a share of the map's float32
# bytes: its growth was 0.62-1.6 times the map with 2 threads over boxes of 256 to 512 voxels
# (cubes, 128 x 512^2, 300 x 420 x 360), low-passes of 8 to 40 Å at 1 Å and chunks of 16 to the
# default, and 0.49-1.6 times with one thread. Warming more than a run uses would raise its peak.
HEAP_SHARE = 0.5
# Memory (the machine's, or a cgroup's) below which nothing is warmed: WARM_ROOM times the map's
# float32 bytes and 1 GiB. A 512^3 run used 2.0 GB of a 3 GiB cgroup, page cache included; inside
# 1.5 GiB, warmed memory evicted the input's cached pages, and the passes read them from disk again
# (4 runs from a cold cache: 5.26-6.49 s against 4.50-5.84 s without).
WARM_ROOM = 4


def _fail(message: str, verbose: bool, code: int = 1) -> None:
    """Print one error line (and the traceback with --verbose) and exit with ``code``."""
    if verbose:
        traceback.print_exc()
    typer.echo(f"occupy-dask: error: {message}", err=True)
    raise typer.Exit(code)


@app.command(help="Estimate the local map scale (occupancy proxy) of a cryo-EM map, chunked with dask.")
def main_command(
    input_map: Path | None = typer.Option(None, "--input-map", "-i", help="Input map (.mrc/.map/.ccp4, optionally .gz)."),
    emdb: str | None = typer.Option(
        None,
        "--emdb",
        "--emdb-id",
        help="Fetch the main map of this EMDB entry (e.g. 1832) and use it as input; outputs are named emd_<id>. "
        "Mirror: set OCCUPY_DASK_EMDB_URL to the archive's structures folder.",
    ),
    relion_classes: Path | None = typer.Option(
        None,
        "--relion-classes",
        help="RELION run_itNNN_model.star: estimate and modify every class map (default: amplify, amount 1) and write a new _model.star.",
    ),
    resolution: float | None = typer.Option(
        None, "--resolution", "-r", help="Map resolution [Å]; low-pass at this unless --lowpass-input is larger."
    ),
    lowpass_input: float | None = typer.Option(
        None,
        "--lowpass-input",
        "--lowpass",
        "-lp",
        help="Low-pass of the input for the solvent model and confidence [Å]. Default: --resolution, else max(8, 3 x voxel size).",
    ),
    kernel_size: int | None = typer.Option(
        None,
        "--kernel-size",
        help="Kernel box edge [voxels, odd >= 3]. Default: floor(lowpass/voxel) made odd, clipped to [3, 9].",
    ),
    kernel_radius: float | None = typer.Option(None, "--kernel-radius", help="Kernel radius [voxels]. Default: lowpass / (2 x voxel size)."),
    tau: float | None = typer.Option(None, "--tau", help="Percentile (0-1) for the full-scale reference. Default: root of x^n_v + x - 1."),
    tile_size: int | None = typer.Option(
        None,
        "--tile-size",
        help="Tile edge for the full-scale reference [voxels]. Default: 12 (box//20 with --reference-compatible).",
    ),
    tile_grid: int | None = typer.Option(
        None,
        "--tile-grid",
        help="Use the reference's grid of G tiles per axis instead of non-overlapping tiles. Default: off (20 with --reference-compatible).",
    ),
    occupancy: bool | None = typer.Option(
        None,
        "--occupancy/--raw-scale",
        "--lp-scale",
        help="Estimate scale on the low-passed map (occupancy mode) or the raw map (resolution mode). Default: raw, occupancy when modifying.",
    ),
    solvent_def: Path | None = typer.Option(
        None, "--solvent-def", help="Mask defining solvent or content (either polarity), same grid as the input."
    ),
    hedge_confidence: float | None = typer.Option(None, "--hedge-confidence", help="Raise the confidence to this power (> 1). Default: off."),
    s0: bool = typer.Option(
        False, "--S0/--SW", help="Full-scale reference: tau x the largest scale-data value (S0), or the largest tile percentile (SW). Default: SW."
    ),
    max_box: int | None = typer.Option(
        None,
        "--max-box",
        help="Quick preview of a large map: estimate on the map Fourier-cropped to this box [voxels, even]; modified maps come back "
        "at full size. Default: off (full resolution).",
    ),
    nlrc: bool = typer.Option(False, "--nlrc", help="Noise-level recalibration: stretch [confidence limit, 1] of the scale onto [0, 1]."),
    debias: bool = typer.Option(
        False,
        "--debias",
        help="Measure the scale above the noise floor (the local maximum that solvent noise alone reaches): "
        "partial occupancies closer to the truth. Default: off.",
    ),
    amplify: bool = typer.Option(
        False,
        "--amplify/--no-amplify",
        "-am",
        help="Amplify confident partial occupancies by the local scale (amount from --amplify-amount or --gamma).",
    ),
    amplify_amount: float | None = typer.Option(
        None,
        "--amplify-amount",
        help="Exponent a of the modification, data x S^-a: 1 raises every confident partial occupancy to full, 0 < a < 1 partly, "
        "a < 0 attenuates (-1: data x S). Range [-1, 1]. Default: 1 with --amplify, -1 with --attenuate.",
    ),
    attenuate: bool = typer.Option(False, "--attenuate", "-at", help="Attenuate partial occupancies (amount -1, or 1 - G with --gamma)."),
    gamma: float | None = typer.Option(
        None, "--gamma", help="Later OccuPy spelling (G > 1): --amplify means amount 1 - 1/G, --attenuate amount 1 - G."
    ),
    scale_limit: float = typer.Option(
        0.05, "--amplify-limit", "--scale-limit", help="Scale at or below which nothing is modified [0-1]. Default: 0.05."
    ),
    sigmoid: float | None = typer.Option(None, "--sigmoid", help="Sigmoid modification of the scale with this power (>= 1); needs --pivot."),
    pivot: float | None = typer.Option(None, "--pivot", help="Scale (0-1) that the sigmoid keeps fixed."),
    exclude_solvent: bool = typer.Option(
        False,
        "--exclude-solvent/--retain-solvent",
        help="Flatten solvent to 0 in modified maps (alone: write the solvent-excluded input). Default: retain.",
    ),
    lowpass_output: float | None = typer.Option(
        None, "--lowpass-amplified", help="Low-pass the modified maps at this resolution [Å] (OccuPy: --lowpass-output). Default: off."
    ),
    hist_match: bool = typer.Option(False, "--hist-match", help="Histogram-match each modified map to the input (the input's grey scale)."),
    omit_confidence: bool = typer.Option(
        False, "--omit-confidence", help="Modify without weighting by the confidence (not recommended: solvent noise is modified too)."
    ),
    subtraction_mask: bool = typer.Option(
        False,
        "--subtraction-mask",
        help="With --attenuate or --sigmoid: also write subtraction_mask_*.mrc [0-1], the fraction of density each keeps "
        "(for RELION signal subtraction).",
    ),
    output_map: str | None = typer.Option(
        None,
        "--output-map",
        "-o",
        "--output_map",
        help="Modified map name: relative names are inside --output-dir, absolute ones as given. Default: out_<name>.mrc; "
        "several modifications get ampl_/attn_/sigm_ prefixes on it.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic solvent added where attenuation removed signal. Default: 0."),
    target_mask: Path | None = typer.Option(
        None, "--target-mask", help="Mask (> 0.5 inside) of a region whose occupancy is reported (printed and logged)."
    ),
    report: bool = typer.Option(
        False, "--report", help="Write report_<name>.html: slices of every map, the plots and every number, in one file for any browser."
    ),
    plot: bool = typer.Option(False, "--plot", help="Write solModel_<name>.png (and modification_<name>.png when modifying)."),
    save_chimerax: bool = typer.Option(
        True, "--chimerax/--no-chimerax", help="Write the ChimeraX script chimX_<name>.cxc (also --save-chimerax/--no-save-chimerax)."
    ),
    chimerax_silent: bool = typer.Option(False, "--chimerax-silent", help="Write the ChimeraX script and do not open ChimeraX (the default)."),
    show_chimerax: bool = typer.Option(
        False, "--show-chimerax", help="Write the ChimeraX script and open it in ChimeraX when done (if chimerax is on PATH)."
    ),
    min_vis_scale: float | None = typer.Option(
        None, "--min-vis-scale", help="Lowest scale the ChimeraX colouring and its colour key resolve [0-1]. Default: the confidence limit."
    ),
    save_all_maps: bool = typer.Option(
        False, "--save-all-maps", help="Also write the low-passed input lowpass_<name>.mrc and each modification factor modfactor_*.mrc."
    ),
    chunks: int | None = typer.Option(
        None,
        "--chunks",
        help=(
            "Cubic chunks of this edge [voxels]. Default: slabs of whole planes of 32-64 MB (cubes of 256 for very large planes), "
            "smaller where the memory limit needs it."
        ),
    ),
    output_dir: Path = typer.Option(Path("."), "--output-dir", "-d", help="Directory for all outputs. Default: current directory."),
    keep_output_path: bool = typer.Option(False, "--keep-output-path", help="Write the outputs beside the input map (instead of --output-dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    temp_dir: Path | None = typer.Option(
        None, "--temp-dir", help="Directory for temporary files (gzip input, spilled low-pass). Default: system temp."
    ),
    reference_compatible: bool = typer.Option(
        False,
        "--reference-compatible",
        help="Use every convention of the reference OccuPy 0.1.13 (tiles, low-pass mask, fit, lookup) to check numbers against it.",
    ),
    verbose: bool | None = typer.Option(
        None,
        "--verbose/--quiet",
        "-v/-q",
        help="Print the settings table and detected limits (and tracebacks on error); --quiet prints only errors.",
    ),
    allow_nonfinite: bool = typer.Option(
        False, "--allow-nonfinite", help="Replace NaN and infinite voxels with the median of the finite ones (default: refuse the map)."
    ),
    profile: bool = typer.Option(False, "--profile", help="Print a table of stage timings (reductions, low-pass, fused pass and writes)."),
    output_format: str | None = typer.Option(
        None, "--format", help="Map output format: mrc, zarr (zarr v3) or ome.zarr (OME-NGFF pyramid). Default: from -o's suffix, else mrc."
    ),
    cluster: str = typer.Option(
        "local", "--cluster", help="Where to compute: local (threads, or --workers processes) or slurm (dask-jobqueue, needs --cluster-config)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Local: run on a LocalCluster of this many worker processes instead of threads."),
    threads: int | None = typer.Option(None, "--threads", help="Threads (per worker with --workers). Default: all cores."),
    memory_limit: str | None = typer.Option(
        None,
        "--memory-limit",
        help=(
            "Memory limit, e.g. 4GB: per worker with --workers, else for the run; automatic chunks are made to fit it, "
            "--chunks that cannot fit are refused."
        ),
    ),
    scheduler_address: str | None = typer.Option(None, "--scheduler-address", help="Run on an existing dask scheduler, e.g. tcp://10.0.0.5:8786."),
    scheduler_file: Path | None = typer.Option(None, "--scheduler-file", help="Run on the existing dask scheduler described by this file."),
    scheduler_timeout: float = typer.Option(30.0, "--scheduler-timeout", help="Seconds to wait for an existing scheduler. Default: 30."),
    cluster_config: Path | None = typer.Option(
        None,
        "--cluster-config",
        help="Cluster settings: dask-jobqueue file for --cluster slurm (cluster_configs/slurm.yaml), or local workers/threads (local.yaml).",
    ),
    jobs: int | None = typer.Option(None, "--jobs", help="--cluster slurm: this many worker jobs. Default: 1."),
    adaptive: str | None = typer.Option(None, "--adaptive", help="--cluster slurm: scale between MIN:MAX worker jobs with the load."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Run under a distributed scheduler and print its dashboard link."),
    dashboard_address: str | None = typer.Option(
        None, "--dashboard-address", help="Where the dashboard listens, e.g. 0.0.0.0:8787. Default: 127.0.0.1, a free port."
    ),
    tls: bool = typer.Option(
        True,
        "--tls/--no-tls",
        help="Clusters started here (--workers, --cluster slurm) talk TLS with credentials made for the run. "
        "--no-tls: plain TCP, which any process that reaches the scheduler can join. Default: TLS.",
    ),
    tls_ca_file: Path | None = typer.Option(None, "--tls-ca-file", help="An existing TLS scheduler: the CA certificate (PEM)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="An existing TLS scheduler: this client's certificate (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="An existing TLS scheduler: this client's private key (PEM)."),
    print_job_script: bool = typer.Option(False, "--print-job-script", help="Print the SLURM job script of --cluster-config and exit."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    quiet = verbose is False
    verbose = bool(verbose)
    source = input_map or relion_classes or (f"EMD-{emdb}" if emdb else None)
    if input_map is not None and emdb is None and relion_classes is None:  # on the core the imports below leave idle
        distributed = workers is not None or dashboard or scheduler_address or scheduler_file
        _warm_memory(input_map, max_box, local=cluster == "local" and not (distributed or cluster_config or memory_limit), threads=threads)
    # The method's modules (dask, numba, scipy) are imported here, not for --help or --version.
    # They leave about 100,000 objects that live as long as the process: collected during the
    # imports and left to the garbage collector afterwards, each of its full passes would walk
    # them all (0.2-0.5 s per run, and again at exit). Frozen, it walks only what the run creates.
    gc.disable()
    _without_dask_docstrings()
    from .api import run_map
    from .cluster import ClusterSpec, connect, job_script
    from .settings import RunOptions

    gc.freeze()
    gc.enable()

    try:
        spec = ClusterSpec.from_options(
            mode=cluster,
            cluster_config=cluster_config,
            adaptive=adaptive,
            print_job_script=print_job_script,
            workers=workers,
            threads=threads,
            memory_limit=memory_limit,
            scheduler_address=scheduler_address,
            scheduler_file=str(scheduler_file) if scheduler_file else None,
            jobs=jobs,
            dashboard=dashboard,
            dashboard_address=dashboard_address,
            timeout=scheduler_timeout,
            tls=tls,
            tls_ca_file=str(tls_ca_file) if tls_ca_file else None,
            tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None,
            shared_dir=str(next(f for f in (output_dir.absolute(), *output_dir.absolute().parents) if f.is_dir())),  # SLURM credentials
        )
        if not spec.tls and not spec.external and (spec.workers is not None or spec.mode == "slurm"):
            typer.echo("occupy-dask: warning: --no-tls: plain TCP; any process that reaches the scheduler can join and run code", err=True)
        if spec.memory_limit and not spec.distributed:  # a limit for this process: keep little freed memory
            from .buffers import keep_freed_memory
            from .cluster import parse_memory

            keep_freed_memory(parse_memory(spec.memory_limit) // 16)
        if print_job_script:
            typer.echo(job_script(spec))
            raise typer.Exit()
        if sum(x is not None for x in (input_map, relion_classes, emdb)) != 1:
            raise UsageError("give one input: --input-map/-i MAP, --emdb ID or --relion-classes MODEL.star")
        if min_vis_scale is not None and not 0.0 <= min_vis_scale < 1.0:
            raise UsageError(f"--min-vis-scale must lie in [0, 1), got {min_vis_scale}")
        if keep_output_path:
            if input_map is None:
                raise UsageError("--keep-output-path needs --input-map (the outputs go beside it)")
            output_dir = input_map.absolute().parent
        options = RunOptions(
            output_dir=output_dir,
            min_vis_scale=min_vis_scale,
            output_map=output_map,
            output_format=output_format,
            save_all_maps=save_all_maps,
            save_chimerax=save_chimerax or chimerax_silent or show_chimerax,  # both write the script, as in OccuPy
            plot=plot,
            report=report,
            overwrite=overwrite,
            temp_dir=str(temp_dir) if temp_dir else None,
            allow_nonfinite=allow_nonfinite,
        )
        settings_options = {
            "resolution": resolution,
            "lowpass": lowpass_input,
            "kernel_size": kernel_size,
            "kernel_radius": kernel_radius,
            "tau": tau,
            "tile_size": tile_size,
            "tile_grid": tile_grid,
            "occupancy": occupancy,
            "hedge_confidence": hedge_confidence,
            "nlrc": nlrc,
            "debias": debias,
            "reference_compatible": reference_compatible,
            "chunks": chunks,
            "amplify": amplify,
            "attenuate": attenuate,
            "amplify_amount": amplify_amount,
            "gamma": gamma,
            "sigmoid": sigmoid,
            "pivot": pivot,
            "exclude_solvent": exclude_solvent,
            "scale_limit": scale_limit,
            "lowpass_output": lowpass_output,
            "seed": seed,
            "s0": s0,
            "omit_confidence": omit_confidence,
            "hist_match": hist_match,
            "subtraction_masks": subtraction_mask,
            "max_box": max_box,
        }
        masks = {"solvent_def": solvent_def, "target_mask": target_mask}
        if relion_classes is not None:
            from .relion import check_class_outputs, class_settings

            check_class_outputs(options)
            settings_options = class_settings(settings_options)
        with connect(spec, quiet) as runner:
            if relion_classes is not None:
                from .relion import run_relion_classes

                results, new_star = run_relion_classes(relion_classes, settings_options, options, runner, **masks)
                _print_classes(relion_classes, results, new_star, quiet)
                return
            if emdb is not None:
                result = _run_emdb(emdb, options, runner, quiet, masks, settings_options)
            else:
                result = run_map(input_map, options, runner=runner, **masks, **settings_options)
    except OccupyError as exc:
        _fail(f"{source}: {exc}" if exc.prefix_source and source else str(exc), verbose, exc.exit_code)
    except MemoryError:
        _fail(f"{source}: out of memory; try a smaller --chunks", verbose)
    except OSError as exc:  # a full disk, a vanished directory, ... while reading or writing
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{source}: {exc.strerror or exc}{where}; no output was left half-written", verbose)
    except KeyboardInterrupt:
        how, code = ("terminated", 143) if _TERMINATED else ("interrupted", 130)  # 128 + SIGTERM, 128 + SIGINT
        typer.echo(f"occupy-dask: {how}; no output was left half-written", err=True)
        raise typer.Exit(code) from None
    _print_result(result, verbose, quiet, profile, target_mask)
    if show_chimerax and "chimerax" in result.outputs:
        _show_chimerax(result.outputs["chimerax"], quiet)


def _run_emdb(entry: str, options, runner, quiet: bool, masks: dict, settings_options: dict):
    """Fetch the entry's map into a private temporary folder, run on it, remove the folder."""
    import shutil
    from dataclasses import replace

    from .api import run_map
    from .io.emdb import entry_number, fetch_map, map_url

    options = replace(options, emdb_entry=entry_number(entry))

    if quiet:
        path = fetch_map(entry, options.temp_dir)
    else:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        typer.echo(f"fetching {map_url(entry)}", err=True)
        with Progress(TextColumn("download"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("download", total=None)
            path = fetch_map(entry, options.temp_dir, progress=lambda done, total: bar.update(task, completed=done, total=total))
    try:
        return run_map(path, options, runner=runner, **masks, **settings_options)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _show_chimerax(script: Path, quiet: bool) -> None:
    """--show-chimerax: start ChimeraX on the script in the background, or say in one line why not."""
    import shutil
    import subprocess

    chimerax = shutil.which("chimerax")
    if chimerax is None:
        typer.echo(f"ChimeraX is not on PATH; open {script} in it to see the result", err=True)
        return
    subprocess.Popen([chimerax, str(script.absolute())], cwd=script.parent, stdin=subprocess.DEVNULL, start_new_session=True)
    if not quiet:
        typer.echo(f"opening {script} in ChimeraX")


PANELS = {
    "Input": "input_map emdb relion_classes solvent_def target_mask allow_nonfinite",
    "Estimation": "resolution lowpass_input kernel_size kernel_radius tau tile_size tile_grid occupancy hedge_confidence nlrc debias "
    "s0 max_box reference_compatible",
    "Modification": "amplify amplify_amount attenuate gamma scale_limit sigmoid pivot exclude_solvent lowpass_output hist_match "
    "omit_confidence subtraction_mask seed",
    "Outputs": "output_map output_dir keep_output_path output_format overwrite report plot save_chimerax chimerax_silent show_chimerax "
    "min_vis_scale save_all_maps temp_dir verbose profile",
    "Compute and cluster": "chunks cluster workers threads memory_limit scheduler_address scheduler_file scheduler_timeout cluster_config jobs "
    "adaptive dashboard dashboard_address tls tls_ca_file tls_cert tls_key print_job_script",
}


def _arrange_help(command) -> None:
    """Group the options of --help in panels, escape the units in their texts (rich reads
    ``[...]`` as markup and would drop ``[Å]`` or ``[voxels, odd >= 3]``), and leave typer's
    ``[default: ...]`` off where the text already gives the default."""
    import inspect

    panel_of = {name: panel for panel, names in PANELS.items() for name in names.split()}
    for name, parameter in inspect.signature(command).parameters.items():
        info = parameter.default
        if isinstance(getattr(info, "help", None), str) and "\\[" not in info.help:
            info.help = info.help.replace("[", "\\[")
        if isinstance(getattr(info, "help", None), str) and "Default" in info.help:
            info.show_default = False  # the text says it, with its meaning; typer would repeat it
        if name in panel_of:
            info.rich_help_panel = panel_of[name]


_arrange_help(main_command)


def _print_result(result, verbose: bool, quiet: bool, profile: bool, target_mask: Path | None) -> None:
    """Warnings, the settings table (--verbose), the target occupancy, stage timings and the files written."""
    from .outputs import output_kind
    from .report import limits

    est = result.estimate
    for message in est.warnings:
        typer.echo(f"occupy-dask: warning: {message}", err=True)
    if verbose:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"occupy-dask {__version__}: settings and detected limits")
        for col in ("quantity", "unit", "value"):
            table.add_column(col)
        for row in limits(est):
            table.add_row(*row)
        Console(stderr=False).print(table)
    if est.target_occupancy is not None and not quiet:
        t = est.target_occupancy
        typer.echo(f"target occupancy {t.occupancy:.4f} ({t.n_voxels} voxels in {target_mask.name}, tau {t.tau:.4f})")
    if profile:
        _print_profile(result.timings)
    if not quiet:
        kinds = {name: output_kind(name, est) for name in result.outputs}
        width = max(len(k) for k in kinds.values())
        for name, path in result.outputs.items():
            typer.echo(f"wrote {kinds[name]:<{width}}  {path}")


def _print_profile(timings) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="stage timings")
    table.add_column("stage")
    table.add_column("wall (s)", justify="right")
    for label, seconds in timings:
        table.add_row(label, f"{seconds:.2f}")
    table.add_row("total", f"{sum(t for _, t in timings):.2f}")
    Console().print(table)


def _print_classes(star: Path, results, new_star: Path, quiet: bool) -> None:
    """Each class's warnings, and (unless quiet) the table of classes and the new model file."""
    for r in results:
        for message in r.run.estimate.warnings:
            typer.echo(f"occupy-dask: warning: class {r.index} ({r.source.name}): {message}", err=True)
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{star.name}: median scale inside each class's confident region (confidence > 0.5)")
    for col in ("class", "map", "median scale", "confident voxels", "modified map"):
        table.add_column(col)
    for r in results:
        median = "n/a" if r.median_scale is None else f"{r.median_scale:.3f}"
        table.add_row(str(r.index), r.source.name, median, str(r.confident_voxels), r.modified.name)
    Console().print(table)
    typer.echo(f"wrote model    {new_star}")


_TERMINATED = []


def _terminate(signum, frame) -> None:
    """SIGTERM (``kill``, SLURM's ``scancel``) ends a run like Ctrl-C: temporaries are removed;
    the exit status is 143."""
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


# second spellings of a flag, read as its first (kept out of --help's option column, where rich would cut them)
ALIASES = {"--save-chimerax": "--chimerax", "--no-save-chimerax": "--no-chimerax", "--lowpass-output": "--lowpass-amplified"}


def translate_occupy_spellings(argv: list[str]) -> tuple[list[str], list[str]]:
    """OccuPy's own spellings in ``argv`` made occupy-dask's: ``--amplify G`` / ``--attenuate G``
    (0.1.13's gamma after the flag) become ``--amplify --gamma G``, ``--help-all`` is ``--help``,
    and the second spellings in ``ALIASES`` their first.
    Returns the arguments and one note per translation. Gammas that cannot be one ``--gamma``
    raise UsageError with the reason."""
    args, notes, gammas = [], [], []
    i = 0
    while i < len(argv):
        word = argv[i]
        flag, _, value = word.partition("=")
        if flag in ALIASES:
            word = ALIASES[flag] + (f"={value}" if value else "")
        if word == "--help-all":
            args.append("--help")
        elif word in ("--amplify", "-am", "--attenuate", "-at") and i + 1 < len(argv) and _is_number(argv[i + 1]):
            value = float(argv[i + 1])
            long = "--amplify" if word in ("--amplify", "-am") else "--attenuate"
            if value == 1.0:
                notes.append(f"{word} 1 (OccuPy 0.1.13's default) changes nothing; ignored")
            else:
                args.append(long)
                gammas.append(value)
                notes.append(f"{word} {argv[i + 1]} is OccuPy 0.1.13's spelling; read as {long} --gamma {argv[i + 1]}")
            i += 1
        else:
            args.append(word)
        i += 1
    if len(set(gammas)) > 1:
        raise UsageError(
            f"--amplify and --attenuate with different gammas ({', '.join(f'{g:g}' for g in gammas)}) need two runs: occupy-dask takes one --gamma"
        )
    if gammas:
        if "--gamma" in args:
            raise UsageError(f"a gamma after --amplify/--attenuate and --gamma: give one (use --amplify --gamma {gammas[0]:g})")
        args += ["--gamma", repr(gammas[0])]
    return args, notes


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def main() -> None:
    import os
    import signal
    import sys

    from .buffers import keep_freed_memory, single_threaded_libraries, without_huge_page_advice

    single_threaded_libraries(os.environ)
    without_huge_page_advice(os.environ)
    signal.signal(signal.SIGTERM, _terminate)
    keep_freed_memory()
    try:
        args, notes = translate_occupy_spellings(sys.argv[1:])
    except UsageError as exc:
        typer.echo(f"occupy-dask: error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    for note in notes:
        typer.echo(f"occupy-dask: note: {note}", err=True)
    try:
        app(args=args, prog_name="occupy-dask")
    finally:
        # The run leaves objects of its own, numba's type registries above all (set up by its
        # first kernel call, after the freeze of the imports): the interpreter's last collection
        # would walk them all as it exits, 0.13 s against 0.05 s frozen (32^3, from the end of
        # the command to the end of the process, median of 8 runs each).
        gc.freeze()


if __name__ == "__main__":
    main()
