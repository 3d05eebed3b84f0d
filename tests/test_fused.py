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
        {"amplify": True, "sigmoid": 2.0, "pivot": 0.3, "hist_match": True, "s0": True},  # histograms are exact sums over chunks
        {"attenuate": True, "omit_confidence": True, "lowpass_output": 6.0, "hist_match": True},
        {"amplify": True, "max_box": 48},  # estimated on a 48^3 preview, padded back to 64^3
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


def test_omit_confidence_modifies_solvent_too_and_keeps_the_confidence_map(phantom64):
    kw = dict(voxel_size=1.5, chunks=32, amplify=True, gamma=2.0)
    with occupy_dask.estimate(phantom64, omit_confidence=True, **kw) as est:
        omitted, conf, scale = (a.compute() for a in (est.modified(0), est.confidence_map, est.scale))
        warnings = est.warnings
    with occupy_dask.estimate(phantom64, **kw) as est:
        weighted, conf_default = est.modified(0).compute(), est.confidence_map.compute()
    assert np.array_equal(conf, conf_default) and conf.min() == 0.0  # the estimate's confidence is still written
    with np.errstate(divide="ignore"):
        factor = np.where(scale > 0.05, scale ** np.float32(-0.5), np.float32(1.0))
    lo, hi = phantom64.min(), phantom64.max()
    assert np.allclose(omitted, np.clip(phantom64 * factor, lo, hi), atol=1e-6)  # data x factor everywhere
    solvent = conf == 0
    assert np.abs(omitted - phantom64)[solvent].max() > 0.01 and np.array_equal(weighted[solvent], phantom64[solvent])
    assert any("--omit-confidence" in w and "solvent" in w for w in warnings)


def test_omit_confidence_under_reference_compatible_writes_the_weight_used(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, amplify=True, omit_confidence=True, reference_compatible=True) as est:
        assert np.all(est.confidence_map.compute() == 1.0)  # as OccuPy 0.1.13 writes it


def test_hist_match_gives_the_input_grey_scale(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=24, amplify=True, hist_match=True) as est:
        matched, unmatched = est.modified(0).compute(), None
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=24, amplify=True) as est:
        unmatched = est.modified(0).compute()
    q = np.linspace(0.001, 0.999, 41)
    span = phantom64.max() - phantom64.min()
    assert np.abs(np.quantile(matched, q) - np.quantile(phantom64, q)).max() < 1e-3 * span  # the input's histogram
    assert np.abs(np.quantile(unmatched, q) - np.quantile(phantom64, q)).max() > 0.02 * span  # which amplification changed
    order = np.argsort(unmatched.ravel(), kind="stable")  # and the modified map's order of voxels kept
    assert np.all(np.diff(matched.ravel()[order]) >= 0)


def test_s0_full_scale_is_tau_times_the_largest_scale_data_value(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, occupancy=True, s0=True) as est:
        assert est.s_max == est.settings.tau * float(est.lp_range[1])
        assert np.array_equal(est.scale.compute() == 1.0, est.scale.compute() >= 1.0)


def test_subtraction_masks_follow_the_gui_tables(phantom64):
    from occupy_dask.kernels.modify import subtraction_table

    kw = dict(voxel_size=1.5, chunks=32, attenuate=True, gamma=3.0, sigmoid=2.0, pivot=0.3, subtraction_masks=True)
    with occupy_dask.estimate(phantom64, **kw) as est:
        scale = est.scale.compute()
        attn, sigm = est["submask_0"].compute(), est["submask_1"].compute()
    index = (scale * np.float32(999)).astype(np.int16)
    assert np.array_equal(attn, subtraction_table("attenuate", 2.0)[index])
    assert np.array_equal(sigm, subtraction_table("sigmoid", power=2.0, pivot=0.3)[index])
    for mask in (attn, sigm):
        assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask.min() < 0.5 and mask.max() == 1.0
    assert np.allclose(attn[scale > 0], (scale[scale > 0] ** 2)[...], atol=4e-3)  # the fraction an attenuation with gamma 3 keeps
    assert np.all(sigm[scale >= 0.3 + 1e-3] == 1.0)  # nothing above the pivot is subtracted


def test_subtraction_masks_need_attenuation_or_sigmoid(phantom64):
    from occupy_dask.errors import SettingsError

    with pytest.raises(SettingsError, match="--attenuate or --sigmoid"):
        occupy_dask.estimate(phantom64, voxel_size=1.5, amplify=True, subtraction_masks=True)


def test_hist_match_leaves_exclusion_alone_as_the_reference(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, exclude_solvent=True, hist_match=True) as est:
        got, conf = est.modified(0).compute(), est.confidence_map.compute()
    assert np.array_equal(got, phantom64 * conf)  # the solvent-excluded input, not matched (OccuPy matches modified maps only)


def test_modify_of_a_hist_match_estimate_is_clipped_as_documented(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, amplify=True, hist_match=True) as est:
        got = occupy_dask.modify(est, amount=1.0).compute()
        assert got.min() >= phantom64.min() and got.max() == phantom64.max()  # amount 1 lifts partial occupancies to the top: clipped there
        low_passed = occupy_dask.modify(est, amount=1.0, lowpass_output=6.0).compute()
        assert low_passed.min() >= phantom64.min() and low_passed.max() <= phantom64.max()
