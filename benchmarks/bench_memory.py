"""Benchmark: peak memory of occupy-dask (estimate + amplify, occupancy mode) by box, chunks and
threads, with and without --memory-limit; whole-process wall time and peak RSS summed over the
process tree. The numbers behind the README's memory model.

Usage: python benchmarks/bench_memory.py [--sizes 256 384 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_estimate import run_measured, write_phantom

CASES = [  # (chunks, threads, memory limit); chunks None: automatic (under a limit: made smaller to fit it)
    (None, 2, None),
    (None, 1, None),
    (64, 2, None),
    (64, 2, "300MB"),
    (None, 2, "600MB"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    args = parser.parse_args()
    print(f"{'box':>6} {'map [GB]':>9} {'chunks':>9} {'threads':>8} {'--memory-limit':>15} {'wall [s]':>9} {'peak RSS [GB]':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"phantom{n}.mrc"
            write_phantom(path, n)
            for chunks, threads, limit in CASES:
                out = Path(tmp) / "out"
                cmd = [
                    sys.executable,
                    "-m",
                    "occupy_dask",
                    "-i",
                    str(path),
                    "-d",
                    str(out),
                    "-q",
                    "--overwrite",
                    "--amplify",
                    "--threads",
                    str(threads),
                ]
                cmd += ["--chunks", str(chunks)] if chunks else []
                cmd += ["--memory-limit", limit] if limit else []
                wall, peak = run_measured(cmd)
                print(f"{n:>5}^3 {4 * n**3 / 1e9:>9.2f} {chunks or 'slabs':>9} {threads:>8} {limit or '-':>15} {wall:>9.2f} {peak:>14.2f}")
            path.unlink()


if __name__ == "__main__":
    main()
