"""Benchmark: OME-Zarr output two ways, in one process per run (wall time and peak tree RSS).

- ``occupy-dask``: level 0 written by the fused pass's own tasks, levels 2x and 4x made from it,
  the metadata written by ome-zarr-py (what ``--format ome.zarr`` does);
- ``ome-zarr-py``: the lazy scale, confidence and amplified maps handed to
  ``ome_zarr.writer.write_multiscale`` with the same three levels (the library stores them).

Usage: python benchmarks/bench_ome_zarr.py [--size 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench_estimate import run_measured, write_phantom

LIBRARY_RUN = """
import sys
import dask.array as da
import numpy as np
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.writer import write_multiscale
import occupy_dask

path, out = sys.argv[1], sys.argv[2]
with occupy_dask.estimate(path, amplify=True) as est:
    for name in ("scale", "confidence", "modified_0"):
        level0 = est[name].rechunk(est.settings.chunks)
        levels = [level0] + [da.coarsen(np.mean, level0.astype(np.float64), {0: f, 1: f, 2: f}, trim_excess=True).astype(np.float32) for f in (2, 4)]
        group = zarr.open_group(f"{out}/{name}.ome.zarr", mode="w", zarr_format=3)
        axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
        transforms = [[{"type": "scale", "scale": [float(f)] * 3}] for f in (1, 2, 4)]
        write_multiscale(levels, group, fmt=FormatV05(), axes=axes, coordinate_transformations=transforms)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom.mrc"
        write_phantom(path, args.size)
        commands = {
            "occupy-dask --format ome.zarr": lambda out: [
                sys.executable,
                "-m",
                "occupy_dask",
                "-i",
                str(path),
                "--amplify",
                "--format",
                "ome.zarr",
                "-d",
                out,
                "-q",
                "--overwrite",
            ],
            "ome-zarr-py write_multiscale": lambda out: [sys.executable, "-c", LIBRARY_RUN, str(path), out],
        }
        print(f"{args.size}^3, amplify: scale, confidence and amplified map as 3-level OME-Zarr; median of {args.repeat}")
        print(f"{'writer':<32} {'wall [s]':>9} {'peak RSS [GB]':>14}")
        for label, command in commands.items():
            walls, peaks = [], []
            for i in range(args.repeat):
                out = Path(tmp) / f"out_{len(label)}_{i}"
                out.mkdir()
                wall, peak = run_measured(command(str(out)))
                walls.append(wall)
                peaks.append(peak)
            print(f"{label:<32} {statistics.median(walls):>9.2f} {max(peaks):>14.2f}")


if __name__ == "__main__":
    main()
