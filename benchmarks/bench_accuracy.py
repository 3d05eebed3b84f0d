"""Benchmark: how close the local scale comes to the known occupancies of synthetic phantoms.

For each phantom (tests/phantoms.py: domains of random atoms at known occupancies, blurred and
low-passed to a resolution, plus low-passed noise) and each domain, prints the truth (occupancy
over the largest occupancy) and each estimator's relative occupancy (the domain's median scale
over the most occupied domain's): the method (default), the method with the reference's
conventions (``--reference-compatible``), ``--nlrc`` and ``--debias``. Occupancy mode unless
``--raw`` (resolution mode, with ``--resolution`` set to the phantom's, as a user would give it:
``--debias`` refuses resolution mode without it on band-limited maps). The last table sums up the largest error per phantom.

With ``--realizations N`` it instead draws N realizations of each phantom's noise (the same
atoms) and prints, per domain, the mean and the standard deviation of each estimator's error:
how much of an error is bias (which an estimator can remove) and how much is the noise of one
map (which it cannot); the last column is the sd of each domain's median of the method's scale
itself, the noise already in the local maximum.

Usage: python benchmarks/bench_accuracy.py [--raw] [--only design|heldout] [--realizations N]
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


def scale_of(ph, occupancy: bool, options: dict) -> np.ndarray:
    if not occupancy:
        options = {**options, "resolution": ph.spec.resolution}
    with occupy_dask.estimate(ph.data, voxel_size=ph.spec.voxel_size, occupancy=occupancy, **options) as est:
        return est.scale.compute()


def relative(ph, occupancy: bool, options: dict) -> np.ndarray:
    return relative_occupancies(scale_of(ph, occupancy, options), ph.domains, ph.occupancies)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", action="store_true", help="resolution mode (scale of the raw map) instead of occupancy mode")
    parser.add_argument("--only", choices=("design", "heldout"), default=None)
    parser.add_argument("--realizations", type=int, default=0, help="noise realizations per phantom: print mean and sd of the errors")
    args = parser.parse_args()
    specs = {"design": DESIGN_SPECS, "heldout": HELD_OUT_SPECS, None: DESIGN_SPECS + HELD_OUT_SPECS}[args.only]
    if args.realizations:
        spread(specs, args.realizations, not args.raw)
        return
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


def spread(specs, realizations: int, occupancy: bool) -> None:
    """Per phantom and domain: the mean and sd of each estimator's error over noise realizations,
    and the sd of the domain's median of the method's scale itself (not relative): the noise of
    the local maximum, which no per-voxel correction of it removes."""
    chosen = {k: ESTIMATORS[k] for k in ("method", "debias")}
    print(f"{realizations} noise realizations per phantom (same atoms); error = relative occupancy - truth")
    print(
        f"{'phantom':<10} {'noise':>5} {'dom':>3} {'truth':>6}"
        + "".join(f"{k + ' mean':>13}{k + ' sd':>11}" for k in chosen)
        + f"{'|debias| > 0.05':>17}{'median sd':>11}"
    )
    for spec in specs:
        errors = {k: [] for k in chosen}
        medians = []
        for r in range(realizations):
            ph = make_phantom(spec, noise_seed=r)
            truth = np.asarray(ph.occupancies) / max(ph.occupancies)
            for k, options in chosen.items():
                scale = scale_of(ph, occupancy, options)
                errors[k].append(relative_occupancies(scale, ph.domains, ph.occupancies)[0] - truth)
                if k == "method":
                    medians.append([np.median(scale[ph.domains == d]) for d in range(len(truth))])
        for d, t in enumerate(truth):
            cells = "".join(f"{np.mean([e[d] for e in errors[k]]):>13.3f}{np.std([e[d] for e in errors[k]]):>11.3f}" for k in chosen)
            over = sum(abs(e[d]) > 0.05 for e in errors["debias"])
            median_sd = np.std([m[d] for m in medians])
            print(f"{spec.name:<10} {spec.noise:>5.2f} {d:>3} {t:>6.3f}{cells}{f'{over}/{realizations}':>17}{median_sd:>11.3f}")


if __name__ == "__main__":
    main()
