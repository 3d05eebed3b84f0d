"""Ball maximum filter: occupy_dask's numba x-run filter against scipy.ndimage.maximum_filter.

Prints wall time of both (one thread, warm) and the speed-up for kernel sizes 3-9 on an N^3
float32 volume, and checks that the results are bit-identical.

    python benchmarks/bench_ballmax.py [N]        # N = 256 by default
"""

import sys
import time

import numpy as np
from scipy import ndimage

from occupy_dask.kernels.ballmax import ball_max
from occupy_dask.settings import ball_kernel


def best_of(fn, repeats=2):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(n: int = 256) -> None:
    data = np.random.default_rng(0).normal(size=(n, n, n)).astype(np.float32)
    print(f"ball maximum filter on {n}^3 float32 (single thread)")
    print(f"{'kernel':>8} {'radius':>7} {'n_v':>5} {'occupy_dask s':>14} {'scipy s':>9} {'speed-up':>9} {'identical':>10}")
    for size in (3, 5, 7, 9):
        radius = (size - 1) / 2
        kernel = ball_kernel((size,) * 3, (radius,) * 3)
        ball_max(data[:16, :16, :16], kernel)  # compile
        ours, got = best_of(lambda kernel=kernel: ball_max(data, kernel))
        theirs, ref = best_of(lambda kernel=kernel: ndimage.maximum_filter(data, footprint=kernel, mode="reflect"), repeats=1)
        print(
            f"{size:>8} {radius:>7.1f} {int(kernel.sum()):>5} {ours:>14.3f} {theirs:>9.3f} {theirs / ours:>8.1f}x {str(np.array_equal(got, ref)):>10}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
