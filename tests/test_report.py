"""report.py: plot data and the log."""

import numpy as np

import occupy_dask
from occupy_dask.kernels.modify import (
    sigmoid,
)
from occupy_dask.report import modification_curve_data, solvent_plot_data


def test_plot_data_comes_from_the_fitted_model(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, amplify=True, sigmoid=2.0, pivot=0.3) as est:
        d = solvent_plot_data(est)
        m = modification_curve_data(est)
        model, table = est.solvent_model, est.confidence
    assert np.array_equal(d["fit"], model(d["x"]))
    assert np.array_equal(d["density"], model.density)
    assert np.array_equal(d["confidence"], np.clip(table.fraction, 0, 1))
    assert d["solvent_edge"] == est.solvent_edge
    curves = list(m["curves"].values())
    assert len(curves) == 2
    s = m["scale"]
    assert np.allclose(curves[0][s > 0.05], 1.0, atol=1e-6)  # amount 1: every confident scale raised to full
    assert np.allclose(curves[1], sigmoid(s.astype(np.float32), 2.0, 0.3), atol=1e-6)
