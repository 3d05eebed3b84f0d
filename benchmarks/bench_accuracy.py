"""Benchmark: how close the local scale comes to the known occupancies of synthetic phantoms.

For each phantom (tests/phantoms.py: domains of random atoms at known occupancies, blurred and
low-passed to a resolution, plus low-passed noise) and each domain, prints the truth (occupancy
over the largest occupancy) and each estimator's relative occupancy (the domain's median scale
over the most occupied domain's): the method (default), the method with the reference's
conventions (``--reference-compatible``), ``--nlrc`` and ``--debias``. Occupancy mode unless
``--raw`` (resolution mode, with ``--resolution`` set to the phantom's, as a user would give it:
``--debias`` refuses resolution mode without it on band-limited maps). The last table sums up the largest error per phantom.

Usage: python benchmarks/bench_accuracy.py [--raw] [--only design|heldout]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from phantoms import DESIGN_SPECS, HELD_OUT_SPECS, make_phantom, relative_occupancies  # noqa: E402

import occupy_dask  # noqa: E402

ESTIMATORS = {
    "method": {},
    "reference": {"reference_compatible": True},
    "nlrc": {"nlrc": True},
    "debias": {"debias": True},
}


def relative(ph, occupancy: bool, options: dict) -> np.ndarray:
    if not occupancy:
        options = {**options, "resolution": ph.spec.resolution}
    with occupy_dask.estimate(ph.data, voxel_size=ph.spec.voxel_size, occupancy=occupancy, **options) as est:
        scale = est.scale.compute()
    return relative_occupancies(scale, ph.domains, ph.occupancies)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", action="store_true", help="resolution mode (scale of the raw map) instead of occupancy mode")
    parser.add_argument("--only", choices=("design", "heldout"), default=None)
    args = parser.parse_args()
    specs = {"design": DESIGN_SPECS, "heldout": HELD_OUT_SPECS, None: DESIGN_SPECS + HELD_OUT_SPECS}[args.only]
    print(f"mode: {'resolution (raw)' if args.raw else 'occupancy'}; relative occupancy = domain median scale / most occupied domain's")
    columns = f"{'phantom':<10} {'set':<7} {'box':>4} {'voxel':>5} {'res':>4} {'noise':>5} {'dom':>3} {'truth':>6}"
    print(columns + "".join(f"{k:>10}" for k in ESTIMATORS))
    worst = []
    for spec in specs:
        ph = make_phantom(spec)
        results = {k: relative(ph, not args.raw, o) for k, o in ESTIMATORS.items()}
        truth = np.asarray(ph.occupancies) / max(ph.occupancies)
        kind = "design" if spec in DESIGN_SPECS else "heldout"
        for d, t in enumerate(truth):
            cells = "".join(f"{results[k][d]:>10.3f}" for k in ESTIMATORS)
            where = f"{spec.name:<10} {kind:<7} {spec.box:>4} {spec.voxel_size:>5.2f} {spec.resolution:>4.1f} {spec.noise:>5.2f}"
            print(f"{where} {d:>3} {t:>6.3f}{cells}")
        worst.append((spec.name, kind, {k: float(np.abs(results[k] - truth).max()) for k in ESTIMATORS}))
    print()
    print(f"{'largest error':<18}" + "".join(f"{k:>10}" for k in ESTIMATORS))
    for name, kind, errors in worst:
        print(f"{name + ' (' + kind + ')':<18}" + "".join(f"{errors[k]:>10.3f}" for k in ESTIMATORS))


if __name__ == "__main__":
    main()
