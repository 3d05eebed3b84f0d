"""solvent.py: the monotone walk of the content fraction and hedging."""

import numpy as np
import pytest


def test_monotone_walk_and_hedge():
    from occupy_dask.solvent import hedged, monotone_from_top

    raw = np.array([0.3, -0.2, 0.5, 0.4, 0.8, 0.9, 1.0])
    walked = monotone_from_top(raw)
    # walking down: never above the bin above, and each step at least the previous one
    # (0.9, 0.8 step 0.1; 0.4 step 0.4; then 0.0 by the step); the first non-positive raw bin
    # stops the walk: it keeps its raw value and everything below it is 0
    assert np.allclose(walked, [0.0, -0.2, 0.0, 0.4, 0.8, 0.9, 1.0])
    # default: hedging never raises confidence; the reference squares the negative bin
    assert np.all(hedged(walked, 2.0) <= np.clip(walked, 0, 1))
    assert hedged(walked, 2.0)[1] == 0.0
    assert hedged(walked, 2.0, reference=True)[1] == pytest.approx(0.04)
    assert hedged(walked, 2.5, reference=True)[1] == 0.0
