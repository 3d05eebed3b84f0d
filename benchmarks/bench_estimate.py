"""Benchmark: occupy-dask (estimation) as a subprocess on synthetic maps of several box sizes.

Prints wall time, peak RSS summed over the whole process tree (sampled with psutil) and the
cost per voxel, whole and after the fixed start-up (the wall time of a 32^3 run). Every size runs
``--repeat`` times, each into an empty output folder (the last run's outputs are removed before
it starts, outside its time): wall times are medians (with the range), peaks the largest seen.
Each of those runs follows a 32^3 run of its own (after one left out, which warms the caches),
and the cost after start-up is the median of the differences of those pairs: a start-up timed
once, apart from the runs, moves with the machine's speed at that moment and, at 256^3 where it
is most of the wall time, sets the figure more than the map does.

Then the roofline: per size, the bytes the run must read (the input) and write (its outputs and
the temporary stores it spills), the I/O floor at this machine's disk bandwidth (measured here with
O_DIRECT writes and reads of 1 GiB, so the page cache is not measured), the compute floor (the
single kernels a run cannot avoid, each timed here on one core: the forward and inverse FFT of
the low-pass, the ball maximum, the histograms and the modification, divided by the cores), and
how far the wall time is above the larger floor.

``--vs-reference`` also runs the reference, OccuPy 0.1.13 (``--max-box`` at the box, so it works
at full size too), in its own virtual environment with numpy < 2 (made once under
``~/.cache/occupy-dask-bench``), on the same map with the same work (occupancy mode, amplify
gamma 2), and prints the speed-up; it is skipped with a message when the reference cannot be
installed.

Usage: python benchmarks/bench_estimate.py [--sizes 128 256 512] [--repeat 3] [--chunks N] [--extra=--amplify] [--vs-reference]
"""

from __future__ import annotations

import argparse
import math
import mmap
import os
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
STARTUP_BOX = 32  # run before each measured run: what every run costs before its voxels do


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


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) summed over the process and all its children."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [proc] + proc.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        try:
            proc.wait(timeout=0.05)  # returns at the exit, not at the next sample
        except psutil.TimeoutExpired:
            pass
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()}")
    return wall, peak / 1e9


DISK_TEST_BYTES = 1 << 30
DISK_BLOCK = 64 << 20
REFERENCE = "occupy==0.1.13"
REFERENCE_VENV = Path.home() / ".cache" / "occupy-dask-bench" / "occupy-0.1.13"


def disk_bandwidth(folder: Path) -> tuple[float, float, str]:
    """(write, read) bytes per second of the filesystem holding ``folder``, and how measured:
    O_DIRECT when the filesystem takes it, else buffered with fsync and the pages dropped."""
    path = folder / "bandwidth.bin"
    buffer = mmap.mmap(-1, DISK_BLOCK)  # page-aligned, as O_DIRECT needs
    buffer.write(np.random.default_rng(0).integers(0, 255, DISK_BLOCK, dtype=np.uint8).tobytes())
    direct = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct)
    except OSError:
        direct = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    start = time.perf_counter()
    for _ in range(DISK_TEST_BYTES // DISK_BLOCK):
        os.write(fd, buffer)
    os.fsync(fd)
    write = DISK_TEST_BYTES / (time.perf_counter() - start)
    os.close(fd)
    fd = os.open(path, os.O_RDONLY | direct)
    if not direct:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    start = time.perf_counter()
    while os.readv(fd, [buffer]) > 0:
        pass
    read = DISK_TEST_BYTES / (time.perf_counter() - start)
    os.close(fd)
    path.unlink()
    return write, read, "O_DIRECT" if direct else "buffered, fsync and cache dropped"


def kernel_seconds_per_voxel() -> dict[str, float]:
    """Seconds per voxel on one core of each kernel a run cannot avoid, timed on a 256^3 block
    (the FFT pair's cost per voxel grows with log n: see :func:`compute_floor`)."""
    import scipy.fft as spfft

    from occupy_dask.kernels.ballmax import ball_max_valid, ring_shape
    from occupy_dask.kernels.histogram import histogram_counts
    from occupy_dask.kernels.modify import modify_into, power_factor
    from occupy_dask.settings import derive_settings

    m = 256
    data = phantom(m)
    s = derive_settings((m,) * 3, 1.0, occupancy=True, amplify=True)
    h = s.halo
    padded = np.pad(data, [(k, k) for k in h], mode="edge")
    out = np.empty_like(data)
    factor, confidence = np.empty_like(data), np.full_like(data, 0.5)

    def best(fn, repeat=3):
        fn()  # compile, warm caches
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / m**3

    with spfft.set_workers(1):
        fft = best(lambda: spfft.irfftn(spfft.rfftn(data), s=data.shape))
    scratch = np.empty(ring_shape(padded.shape, s.kernel), np.float32)
    seconds = {
        "FFT pair": fft,
        "ball max": best(lambda: ball_max_valid(padded, s.kernel, out=out, scratch=scratch)),
        "histograms": 2 * best(lambda: histogram_counts(data, float(data.min()), float(data.max()))),  # input and low-passed map
        "modification": best(lambda: (power_factor(out, -1.0, 0.05, out=factor), modify_into(data, factor, confidence, out, exclude_solvent=False))),
    }
    return seconds


def compute_floor(n: int, per_voxel: dict[str, float], cores: int) -> float:
    """Seconds of the unavoidable kernels for a box of ``n`` on ``cores`` cores."""
    fft_growth = math.log2(n**3) / math.log2(256**3)
    return sum(v * n**3 * (fft_growth if k == "FFT pair" else 1.0) for k, v in per_voxel.items()) / cores


def reference_python() -> Path | None:
    """The reference's interpreter, installed once into its own venv; None (with a message) when
    it cannot be installed here."""
    python = REFERENCE_VENV / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True, capture_output=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "numpy<2", "scipy", "matplotlib", "mrcfile", "typer", "scikit-image", "wget"], check=True, capture_output=True)
        subprocess.run([*pip, "--no-deps", REFERENCE], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(REFERENCE_VENV, ignore_errors=True)
        detail = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] if getattr(exc, "stderr", None) else [str(exc)]
        print(f"--vs-reference skipped: the reference ({REFERENCE}, numpy < 2) could not be installed: {' '.join(detail)}")
        return None
    return python


def reference_command(python: Path, path: Path, n: int) -> list[str]:
    """The reference on ``path``: occupancy mode, amplify gamma 2, at full size."""
    start = "import typer; from occupy_lib import estimate, args; typer.run(args.parse_and_run)"
    return [str(python), "-c", start, "-i", str(path), "--max-box", str(n), "--occupancy", "--amplify", "2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--chunks", type=int, default=None, help="chunk edge (default: occupy-dask's automatic slabs)")
    parser.add_argument("--extra", default="", help="extra occupy-dask flags, e.g. '--occupancy'")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median wall time, largest peak)")
    parser.add_argument("--vs-reference", action="store_true", help="also time OccuPy 0.1.13 on the same maps (its own venv)")
    args = parser.parse_args()
    rows, roofline, versus = [], [], []
    cores = len(os.sched_getaffinity(0))
    python = reference_python() if args.vs_reference else None
    with tempfile.TemporaryDirectory() as tmp:
        write_bw, read_bw, how = disk_bandwidth(Path(tmp))
        kernels = kernel_seconds_per_voxel()
        small = Path(tmp) / f"phantom{STARTUP_BOX}.mrc"
        write_phantom(small, STARTUP_BOX)
        startups = []

        def command(path: Path, out: Path) -> list[str]:
            cmd = [sys.executable, "-m", "occupy_dask", "-i", str(path), "-d", str(out), "-q", "--overwrite"]
            return cmd + [*(["--chunks", str(args.chunks)] if args.chunks else []), *args.extra.split()]

        def measured(cmd: list[str], out: Path) -> tuple[float, float]:
            # every run writes into an empty folder, as the first does: replacing the last run's
            # outputs would add the filesystem's cost of freeing them (0.2-0.3 s per GB here) to
            # the later runs only
            shutil.rmtree(out, ignore_errors=True)
            return run_measured(cmd)

        small_out = Path(tmp) / f"out{STARTUP_BOX}"
        measured(command(small, small_out), small_out)  # left out: the first run after a while reads its files from disk
        for n in args.sizes:
            path = Path(tmp) / f"phantom{n}.mrc"
            out = Path(tmp) / f"out{n}"
            write_phantom(path, n)
            walls, peaks, marginals = [], [], []
            for _ in range(max(args.repeat, 1)):
                startup, _ = measured(command(small, small_out), small_out)
                wall, peak = measured(command(path, out), out)
                startups.append(startup)
                walls.append(wall)
                peaks.append(peak)
                marginals.append(wall - startup)
            written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            spilled = spill_bytes(n)
            if python is not None:
                ref_out = Path(tmp) / f"ref{n}"
                ref_out.mkdir()
                ref_wall, ref_peak = run_measured(reference_command(python, path.absolute(), n), cwd=ref_out)
                shutil.rmtree(ref_out)
                versus.append((n, statistics.median(walls), ref_wall, ref_peak))
            path.unlink()
            shutil.rmtree(out)  # outputs of earlier sizes would crowd the page cache
            wall = statistics.median(walls)
            rows.append((n, wall, min(walls), max(walls), max(peaks), wall / n**3 * 1e9, statistics.median(marginals) / n**3 * 1e9))
            read = 4 * n**3
            io_floor = read / read_bw + (written + spilled) / write_bw
            roofline.append((n, read, written, spilled, io_floor, compute_floor(n, kernels, cores), wall))
        startup = statistics.median(startups)
    print(f"start-up (a {STARTUP_BOX}^3 run before each run, median of {len(startups)}): {startup:.2f} s")
    print(f"{'box':>6} {'wall [s]':>9} {'range [s]':>13} {'peak RSS [GB]':>14} {'ns/voxel':>9} {'ns/voxel after start-up':>24}")
    for n, wall, lo, hi, peak, per_voxel, marginal in rows:
        print(f"{n:>5}^3 {wall:>9.2f} {lo:>6.2f}-{hi:<6.2f} {peak:>14.2f} {per_voxel:>9.1f} {marginal:>24.1f}")
    marginals = [row[-1] for row in rows]
    if len(marginals) > 1 and min(marginals) > 0:
        print(f"cost per voxel after start-up: largest / smallest = {max(marginals) / min(marginals):.2f}")
    elif len(marginals) > 1:
        print("cost per voxel after start-up: not compared (a size ran no longer than the start-up)")
    print()
    print(f"roofline: disk write {write_bw / 1e9:.2f} GB/s, read {read_bw / 1e9:.2f} GB/s ({how}); {cores} cores; one core per voxel:")
    print("  " + ", ".join(f"{k} {v * 1e9:.1f} ns" for k, v in kernels.items()) + " (FFT pair at 256^3, growing with log n)")
    head = f"{'box':>6} {'read [GB]':>10} {'written [GB]':>13} {'spill [GB]':>11} {'I/O floor [s]':>14} {'compute floor [s]':>18}"
    print(f"{head} {'wall [s]':>9} {'wall / floor':>13}")
    for n, read, written, spilled, io_floor, cpu_floor, wall in roofline:
        print(
            f"{n:>5}^3 {read / 1e9:>10.2f} {written / 1e9:>13.2f} {spilled / 1e9:>11.2f} {io_floor:>14.2f} {cpu_floor:>18.2f} {wall:>9.2f} "
            f"{wall / max(io_floor, cpu_floor):>13.2f}"
        )
    if versus:
        print()
        print(f"{'box':>6} {'occupy-dask [s]':>16} {'OccuPy 0.1.13 [s]':>18} {'its peak RSS [GB]':>18} {'speed-up':>9}")
        for n, ours, theirs, their_peak in versus:
            print(f"{n:>5}^3 {ours:>16.2f} {theirs:>18.2f} {their_peak:>18.2f} {theirs / ours:>8.1f}x")


def spill_bytes(n: int) -> int:
    """Bytes a default run on an ``n``^3 map with 1 Å voxels writes to temporary stores."""
    from occupy_dask.scratch import scratch_bytes
    from occupy_dask.settings import RunOptions, derive_settings

    return scratch_bytes(derive_settings((n,) * 3, 1.0), RunOptions(), None)


if __name__ == "__main__":
    main()
