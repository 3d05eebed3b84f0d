"""Benchmark: occupy-dask (estimation) as a subprocess on synthetic maps of several box sizes.

Prints wall time, peak RSS summed over the whole process tree (sampled with psutil) and the
cost per voxel, whole and after the fixed start-up (the wall time of a 32^3 run). Every size runs
``--repeat`` times: wall times are medians (with the range), peaks the largest seen.
Usage: python benchmarks/bench_estimate.py [--sizes 128 256 512] [--repeat 3] [--chunks N] [--extra=--amplify]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import psutil


def phantom(n: int, seed: int = 0) -> np.ndarray:
    """Gaussian blobs at three occupancies inside a sphere, plus solvent noise (float32)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 0.05, size=(n, n, n)).astype(np.float32)
    z, y, x = np.ogrid[:n, :n, :n]
    for i in range(24):
        centre = n / 2 + rng.uniform(-n / 5, n / 5, size=3)
        occupancy = (1.0, 0.6, 0.3)[i % 3]
        r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
        data += (occupancy * np.exp(-r2 / (2 * (n / 40) ** 2))).astype(np.float32)
    return data


TILE = 256
STARTUP_BOX = 32  # measured first: what every run costs before its voxels do


def write_phantom(path: Path, n: int) -> None:
    """Write a float32 MRC map of box ``n`` with 1 Å voxels: the :func:`phantom` itself up to
    256^3, larger boxes tiled from the 256^3 one (written slab by slab, so building a 1024^3 map
    needs little memory)."""
    if n <= TILE:
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(phantom(n))
            m.voxel_size = 1.0
        return
    tile = phantom(TILE)
    reps = -(-n // TILE)
    with mrcfile.new_mmap(path, shape=(n, n, n), mrc_mode=2, overwrite=True) as m:
        m.voxel_size = 1.0
        for z0 in range(0, n, TILE):
            z1 = min(z0 + TILE, n)
            m.data[z0:z1] = np.tile(tile[: z1 - z0], (1, reps, reps))[:, :n, :n]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) summed over the process and all its children."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [proc] + proc.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()}")
    return wall, peak / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--chunks", type=int, default=None, help="chunk edge (default: occupy-dask's automatic slabs)")
    parser.add_argument("--extra", default="", help="extra occupy-dask flags, e.g. '--occupancy'")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median wall time, largest peak)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        startup = None
        for n in [STARTUP_BOX, *args.sizes]:
            path = Path(tmp) / f"phantom{n}.mrc"
            out = Path(tmp) / f"out{n}"
            write_phantom(path, n)
            cmd = [sys.executable, "-m", "occupy_dask", "-i", str(path), "-d", str(out), "-q", "--overwrite"]
            cmd += [*(["--chunks", str(args.chunks)] if args.chunks else []), *args.extra.split()]
            walls, peaks = [], []
            for _ in range(max(args.repeat, 1)):
                wall, peak = run_measured(cmd)
                walls.append(wall)
                peaks.append(peak)
            path.unlink()
            shutil.rmtree(out)  # outputs of earlier sizes would crowd the page cache
            wall = statistics.median(walls)
            if startup is None:  # the fixed cost of a run: interpreter, imports, compiled kernels
                startup = wall
                continue
            rows.append((n, wall, min(walls), max(walls), max(peaks), wall / n**3 * 1e9, (wall - startup) / n**3 * 1e9))
    print(f"start-up (a {STARTUP_BOX}^3 run, median of {args.repeat}): {startup:.2f} s")
    print(f"{'box':>6} {'wall [s]':>9} {'range [s]':>13} {'peak RSS [GB]':>14} {'ns/voxel':>9} {'ns/voxel after start-up':>24}")
    for n, wall, lo, hi, peak, per_voxel, marginal in rows:
        print(f"{n:>5}^3 {wall:>9.2f} {lo:>6.2f}-{hi:<6.2f} {peak:>14.2f} {per_voxel:>9.1f} {marginal:>24.1f}")
    marginals = [row[-1] for row in rows]
    if len(marginals) > 1:
        print(f"cost per voxel after start-up: largest / smallest = {max(marginals) / min(marginals):.2f}")


if __name__ == "__main__":
    main()
