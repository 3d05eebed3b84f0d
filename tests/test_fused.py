"""fused.py: the fused per-chunk pass; modified maps are chunk-invariant, clipped, and exclusion is data x confidence."""

import numpy as np
import pytest

import occupy_dask


def _modified(data, chunks, **kw):
    with occupy_dask.estimate(data, voxel_size=1.5, chunks=chunks, **kw) as est:
        return [est.modified(i).compute() for i in range(len(est.settings.modifications))], est.raw_range


@pytest.mark.parametrize(
    "options",
    [
        {"amplify": True, "attenuate": True, "gamma": 3.0, "sigmoid": 3.0, "pivot": 0.4},  # attenuation adds synthetic solvent
        {"amplify": True, "exclude_solvent": True, "lowpass_output": 6.0},
    ],
)
def test_every_modified_map_is_chunk_invariant(phantom64, options):
    maps = [_modified(phantom64, c, **options)[0] for c in (16, 33, 64)]
    for other in maps[:-1]:
        for a, b in zip(other, maps[-1]):
            assert np.array_equal(a, b)


def test_modified_maps_are_clipped_to_the_input_range(phantom64):
    (ampl, attn), (lo, hi) = _modified(phantom64, 32, amplify=True, attenuate=True)
    for m in (ampl, attn):
        assert m.dtype == np.float32 and m.min() >= lo and m.max() <= hi
    assert ampl.max() == np.float32(hi)  # amount 1 lifts partial occupancies to the top: clipped there
    assert not np.array_equal(ampl, phantom64) and not np.array_equal(attn, phantom64)


def test_exclusion_alone_multiplies_by_confidence(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, exclude_solvent=True) as est:
        got = est.modified(0).compute()
        conf = est.confidence_map.compute()
    assert np.allclose(got, phantom64 * conf, atol=1e-7)
