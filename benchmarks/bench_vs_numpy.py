"""Benchmark: occupy-dask (estimate + amplify) against an unchunked, single-threaded numpy run
of the same method, on phantoms of 256^3 and 512^3.

Both run as subprocesses; the table gives wall time, peak RSS summed over the process tree
(psutil), the speed-up, and whether the scale, confidence and amplified maps are bit-identical.

    python benchmarks/bench_vs_numpy.py [--sizes 256 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_estimate import run_measured, write_phantom  # noqa: E402


def numpy_baseline(path: str, out_dir: str) -> None:
    """The method on whole arrays, one thread: whole-array FFT, scipy's maximum filter, numpy
    histograms, whole-array modification. Writes scale, confidence and amplified maps."""
    from scipy import ndimage

    from occupy_dask.kernels.histogram import confidence_lookup, density_from_counts, histogram_counts, histogram_edges
    from occupy_dask.kernels.local import inscribed_ellipsoid
    from occupy_dask.kernels.modify import power_factor, suppress
    from occupy_dask.kernels.tiles import tile_layout
    from occupy_dask.lowpass import lowpass_numpy
    from occupy_dask.settings import derive_settings
    from occupy_dask.solvent import confidence_table, fit_solvent_model

    with mrcfile.open(path) as m:
        data = np.array(m.data, dtype=np.float32)
        voxel = float(m.voxel_size.x)
    s = derive_settings(data.shape, voxel, amplify=True)
    lp = lowpass_numpy(data, s.voxel_size, s.lowpass_angstrom)
    origins, _ = tile_layout(data.shape, s.tile_size, s.tile_grid)
    t, k = s.tile_size, int(np.floor(s.tau * s.tile_size**3))
    s_max = max(np.partition(lp[z : z + t, y : y + t, x : x + t].ravel(), k)[k] for z, y, x in origins)
    scale = np.clip(ndimage.maximum_filter(lp, footprint=s.kernel, mode="reflect") / np.float32(s_max), 0, 1).astype(np.float32)
    region = lp[inscribed_ellipsoid(data.shape, (0, 0, 0), data.shape)]
    region_edges = histogram_edges(region.min(), region.max())
    model = fit_solvent_model(
        region_edges[:-1].astype(np.float64), density_from_counts(histogram_counts(region, region.min(), region.max()), region_edges), region_edges
    )
    edges = histogram_edges(lp.min(), lp.max())
    table = confidence_table(model, density_from_counts(histogram_counts(lp, lp.min(), lp.max()), edges), edges)
    confidence = confidence_lookup(lp, table.fraction.astype(np.float32), edges)
    modified = suppress(data * power_factor(scale, s.modifications[0].exponent, s.scale_limit), data, confidence, False)
    modified = np.clip(modified, data.min(), data.max())
    for name, array in (("scale", scale), ("conf", confidence), ("ampl", modified)):
        mrcfile.write(os.path.join(out_dir, f"{name}.mrc"), array.astype(np.float32), overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)  # internal: run the numpy baseline
    args = parser.parse_args()
    if args.baseline:
        numpy_baseline(*args.baseline)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"phantom{n}.mrc"
            write_phantom(path, n)
            ours_dir, base_dir = Path(tmp) / f"ours{n}", Path(tmp) / f"numpy{n}"
            base_dir.mkdir()
            ours = run_measured([sys.executable, "-m", "occupy_dask", "-i", str(path), "-d", str(ours_dir), "--amplify", "-q"])
            env_single = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            os.environ.update(env_single)
            base = run_measured([sys.executable, __file__, "--baseline", str(path), str(base_dir)])
            same = all(
                np.array_equal(mrcfile.read(ours_dir / a), mrcfile.read(base_dir / b))
                for a, b in ((f"scale_occ_phantom{n}.mrc", "scale.mrc"), (f"conf_phantom{n}.mrc", "conf.mrc"), (f"out_phantom{n}.mrc", "ampl.mrc"))
            )
            rows.append((n, ours, base, same))
            path.unlink()
    print(f"nproc {os.cpu_count()}; estimate + amplify, occupancy mode, default settings")
    print(f"{'box':>6} {'occupy-dask s':>14} {'GB':>6} {'numpy s':>9} {'GB':>6} {'speed-up':>9} {'identical':>10}")
    for n, (wall, peak), (bwall, bpeak), same in rows:
        print(f"{n:>5}^3 {wall:>14.2f} {peak:>6.2f} {bwall:>9.2f} {bpeak:>6.2f} {bwall / wall:>8.1f}x {str(same):>10}")


if __name__ == "__main__":
    main()
