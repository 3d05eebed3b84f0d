"""Parity with the reference implementation (OccuPy 0.1.13) on the golden cases.

Reference-compatible mode must reproduce the reference's scale and confidence maps bit for bit
and its logged limits (variability limit included). In the default mode the low-pass and the
confidence lookup differ by design, but raw-mode scale maps (A, G) use neither, so with the
reference's tile grid they must agree within 1e-5 too.
"""

import shlex

import mrcfile
import numpy as np
import pytest

import occupy_dask

CASES = [
    "A_default",
    "B_occ_amplify",
    "C_attenuate_exclude",
    "D_tile12_hedge",
    "E_soldef",
    "F_sigmoid",
    "G_kernel",
    "H_histmatch",
    "I_S0",
    "J_omitconf",
    "K_maxbox",
]
ESTIMATE_FLAGS = {
    "--tile-size": ("tile_size", int),
    "--hedge-confidence": ("hedge_confidence", float),
    "--kernel-size": ("kernel_size", int),
    "--kernel-radius": ("kernel_radius", float),
    "--lowpass": ("lowpass", float),
    "--max-box": ("max_box", int),
}
SWITCHES = {"--S0": "s0", "--omit-confidence": "omit_confidence"}  # they change the estimate (S0) or the confidence written
MODIFY_FLAGS = {  # the reference's gamma spelling, as the golden README translates it
    "--amplify": [("amplify", lambda v: True), ("gamma", float)],
    "--attenuate": [("attenuate", lambda v: True), ("gamma", float)],
    "--sigmoid": [("sigmoid", float)],
    "--pivot": [("pivot", float)],
}


def parse_case(golden_dir, case, modify=False):
    """(input path, solvent definition, estimate keywords) of a golden case; with ``modify``
    the keywords include its modification."""
    words = shlex.split((golden_dir / case / "command.txt").read_text())
    kwargs, soldef, i = {}, None, 1
    while i < len(words):
        flag = words[i]
        if flag == "--occupancy":
            kwargs["occupancy"] = True
        elif flag in SWITCHES:
            kwargs[SWITCHES[flag]] = True
        elif flag == "--hist-match":
            if modify:
                kwargs["hist_match"] = True
        elif flag == "--exclude-solvent":
            if modify:
                kwargs["exclude_solvent"] = True
        elif flag == "--solvent-def":
            soldef = golden_dir / words[i + 1].replace("../", "")
            i += 1
        elif flag in MODIFY_FLAGS:
            kwargs.setdefault("occupancy", True)
            if modify:
                for name, kind in MODIFY_FLAGS[flag]:
                    kwargs[name] = kind(words[i + 1])
            i += 1
        else:
            name, kind = ESTIMATE_FLAGS[flag]
            kwargs[name] = kind(words[i + 1])
            i += 1
        i += 1
    return golden_dir / words[0], soldef, kwargs


def reference_stdout_value(golden_dir, case, label):
    for line in (golden_dir / case / "stdout.txt").read_text().splitlines():
        if line.strip().startswith(label):
            return float(line.split(":")[-1])
    raise KeyError(label)


def run_case(golden_dir, case, **extra):
    path, soldef, kwargs = parse_case(golden_dir, case)
    kwargs.update(extra)
    est = occupy_dask.estimate(path, solvent_def=soldef, chunks=40, **kwargs)
    return est, est.scale.compute(), est.confidence_map.compute()


def golden_map(golden_dir, case, prefix):
    (path,) = sorted((golden_dir / case).glob(f"{prefix}_*.mrc.gz"))
    return mrcfile.read(path)


@pytest.mark.parametrize("case", CASES)
def test_reference_compatible_scale_and_limits(golden_dir, case):
    est, scale, conf = run_case(golden_dir, case, reference_compatible=True)
    with est:
        assert round(est.s_max, 3) == reference_stdout_value(golden_dir, case, "Full scale")
        assert round(est.confidence_limit, 3) == reference_stdout_value(golden_dir, case, "Primary conf. limit")
        assert round(est.solvent_edge, 3) == reference_stdout_value(golden_dir, case, "Solvent drop to 0%")
        assert round(est.content_1pct, 3) == reference_stdout_value(golden_dir, case, "Content at 1% of solvent")
        assert round(est.solvent_model.mu, 3) == pytest.approx(reference_stdout_value(golden_dir, case, "Solvent peak"), abs=1e-3)
        # The pencil FFT runs the whole-array transform order and the histogram edges are built
        # the reference's way, so every voxel agrees exactly.
        assert np.array_equal(conf, golden_map(golden_dir, case, "conf"))
        assert np.array_equal(scale, golden_map(golden_dir, case, "scale"))
        assert round(est.variability_limit, 3) == reference_stdout_value(golden_dir, case, "Variability_limit")


@pytest.mark.parametrize("case", ["A_default", "G_kernel"])
def test_default_mode_raw_scale_maps(golden_dir, case):
    path, _, kwargs = parse_case(golden_dir, case)
    n = mrcfile.open(path, header_only=True).header.nx
    est, scale, conf = run_case(golden_dir, case, tile_grid=20, tile_size=int(n) // 20)
    with est:
        assert np.abs(scale - golden_map(golden_dir, case, "scale")).max() <= 1e-5


@pytest.mark.parametrize("case", [c for c in CASES if c != "J_omitconf"])  # J: the reference writes the weight it used, 1
def test_default_mode_confidence_close_to_reference(golden_dir, case):
    # The exact low-pass (about one Fourier shell more than the reference's) and the direct
    # histogram lookup (the reference looks one bin lower) differ on purpose; both shift voxels
    # along the steep part of the confidence curve only. Measured: 98.2-98.8% of voxels within
    # 0.05, mean confidence within 0.0045 of the reference's.
    est, _, conf = run_case(golden_dir, case)
    with est:
        ref = golden_map(golden_dir, case, "conf")
        assert np.mean(np.abs(conf - ref) <= 0.05) >= 0.98
        assert abs(conf.mean() - ref.mean()) <= 0.01


MODIFIED_CASES = {
    "B_occ_amplify": "ampl",
    "C_attenuate_exclude": "attn",
    "D_tile12_hedge": "ampl",
    "E_soldef": "ampl",
    "F_sigmoid": "sigm",
    "H_histmatch": "ampl",
    "I_S0": "ampl",
    "J_omitconf": "ampl",
    "K_maxbox": "ampl",
}


@pytest.mark.parametrize("case", sorted(MODIFIED_CASES))
def test_reference_compatible_modified_maps(golden_dir, case):
    path, soldef, kwargs = parse_case(golden_dir, case, modify=True)
    with occupy_dask.estimate(path, solvent_def=soldef, chunks=40, reference_compatible=True, **kwargs) as est:
        got = est.modified(0).compute()
    ref = golden_map(golden_dir, case, MODIFIED_CASES[case])
    assert got.shape == ref.shape  # K: estimated at 64^3, modified map back at the input's 96^3
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] >= 0.99999
    if case == "H_histmatch":
        # The match interpolates two chunked histograms of 2^20 bins each (no sort of the whole
        # map). Measured: Pearson 0.99999985; 8e-5 of the voxels, in the tails, differ by more
        # than 1e-3 (at most 0.1) from the reference's exact match.
        assert np.mean(np.abs(got - ref) <= 1e-3) >= 0.9995
        return
    # No random solvent in these cases (amplification, or solvent excluded). Measured: C equal
    # bit for bit, the others on 99.3-99.9% of voxels and within 2.4e-7 elsewhere: float32
    # pow and products round an ulp differently from the reference's numpy/libm build.
    assert np.abs(got - ref).max() <= 1e-6 * (ref.max() - ref.min())
    # J modifies every voxel (no confidence weighting), so the ulp differences reach the solvent
    # too: 79% equal bit for bit there. K comes back through one more FFT, which rounds every
    # voxel its own way (16% equal, none off by more than 3.6e-7).
    if case != "K_maxbox":
        assert np.mean(got == ref) >= (0.75 if case == "J_omitconf" else 0.99)


@pytest.mark.parametrize("case", sorted(set(MODIFIED_CASES) - {"J_omitconf"}))
def test_default_mode_modified_maps_close_to_reference(golden_dir, case):
    # Default mode on the reference's tile grid: only the low-pass, the confidence lookup and
    # the hedge differ by design. The exact low-pass keeps |k| <= 1/lowpass, about one Fourier
    # shell less than the reference on these 64^3/96^3 boxes, which moves the occupancy-mode
    # scale by up to 0.25 and so the modified maps. Measured: Pearson 0.953 (D, hedged and
    # solvent excluded) to 0.9996 (B); within 2% of the input range on 99.04-99.74% of voxels.
    # J is left out: without the confidence weighting the solvent is amplified by that scale
    # too, so the two low-passes give different noise everywhere (71% of voxels within 2%).
    path, soldef, kwargs = parse_case(golden_dir, case, modify=True)
    n = kwargs.get("max_box", mrcfile.open(path, header_only=True).header.nx)  # the box the reference estimates on
    kwargs.setdefault("tile_size", int(n) // 20)
    with occupy_dask.estimate(path, solvent_def=soldef, chunks=40, tile_grid=20, **kwargs) as est:
        got = est.modified(0).compute()
    ref = golden_map(golden_dir, case, MODIFIED_CASES[case])
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] >= 0.95
    assert np.mean(np.abs(got - ref) <= 0.02 * (ref.max() - ref.min())) >= 0.99
