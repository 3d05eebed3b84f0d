"""Estimate the local scale of the shipped EMDB map from Python and summarise it."""

from pathlib import Path

import numpy as np

import occupy_dask

here = Path(__file__).parent
with occupy_dask.estimate(here / "emd_1832.map", chunks=32) as est:
    scale = est.scale.compute()
    confidence = est.confidence_map.compute()
    confident = confidence > 0.5
    print(f"s_max = {est.s_max:.4g}, tau = {est.settings.tau}, kernel n_v = {est.settings.n_v}")
    print(f"confidence limit = {est.confidence_limit:.3f}")
    print(f"median scale where confident: {np.median(scale[confident]):.3f} ({confident.sum()} voxels)")
