"""Map modification (ALGORITHM.md sections 8-10): kernels, settings, chunk invariance, CLI,
plots, targeted occupancy and RELION classes."""

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

import occupy_dask
from occupy_dask.cli import app
from occupy_dask.io.read import MapError
from occupy_dask.kernels.modify import (
    NOISE_TILE,
    power_factor,
    sigmoid,
    sigmoid_factor,
    sigmoid_table_reference,
    suppress,
    synthetic_solvent,
)
from occupy_dask.kernels.tiles import tile_layout
from occupy_dask.report import modification_curve_data, solvent_plot_data
from occupy_dask.settings import SettingsError, derive_settings, tau_for_kernel

runner = CliRunner()
RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def phantom64(golden_dir):
    return mrcfile.read(golden_dir / "phantom64.mrc").astype(np.float32)


# --------------------------------------------------------------------------- kernels


def test_power_factor_leaves_low_scale_alone():
    scale = np.array([0.0, 0.03, 0.05, 0.06, 0.5, 1.0], np.float32)
    got = power_factor(scale, -1.0, 0.05)
    assert np.allclose(got, [1, 1, 1, 1 / 0.06, 2.0, 1.0], rtol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("power,pivot", [(1.0, 0.5), (2.0, 0.3), (5.0, 0.7), (12.0, 0.1)])
def test_sigmoid_fixes_the_pivot_and_is_monotone(power, pivot):
    assert sigmoid(np.array([pivot]), power, pivot)[0] == pytest.approx(pivot, rel=1e-12)
    x = np.linspace(0, 1, 2001)
    y = sigmoid(x, power, pivot)
    assert y[0] == 0 and y[-1] == 1 and np.all(np.diff(y) >= 0)
    if power == 1.0:
        assert np.allclose(y, x)  # power 1 is the identity
        return
    # steeper than the identity through the pivot: lower below it, higher above it
    assert np.all(y[(x > 0) & (x < pivot - 0.01)] < x[(x > 0) & (x < pivot - 0.01)])
    assert np.all(y[(x > pivot + 0.01) & (x < 1)] > x[(x > pivot + 0.01) & (x < 1)])


def test_reference_sigmoid_table_and_factor():
    table = sigmoid_table_reference(2.0, 0.3)
    assert table.shape == (100,) and table.dtype == np.float32 and table[0] == 0
    assert np.all(np.diff(table) >= 0)
    x = np.linspace(0, 1, 100).astype(np.float32)
    assert np.allclose(table, sigmoid(x, 2.0, 0.3), atol=1e-6)
    scale = np.array([0.0, 0.314, 1.0], np.float32)
    got = sigmoid_factor(scale, 2.0, 0.3, reference=True)
    assert got[0] == 1.0  # S = 0: unchanged
    assert got[1] == table[int(np.float32(0.314) * 100 - 1)] / np.float32(0.314)
    assert got[2] == table[99]


def test_synthetic_solvent_is_chunk_invariant_and_gaussian():
    shape = (70, 50, 90)
    whole = synthetic_solvent((0, 0, 0), shape, seed=3, mu=0.1, sigma=0.5)
    pieces = np.empty(shape, np.float32)
    for z in range(0, 70, 33):
        for y in range(0, 50, 16):
            for x in range(0, 90, 41):
                stop = (min(z + 33, 70), min(y + 16, 50), min(x + 41, 90))
                pieces[z : stop[0], y : stop[1], x : stop[2]] = synthetic_solvent((z, y, x), stop, seed=3, mu=0.1, sigma=0.5)
    assert np.array_equal(whole, pieces)
    assert abs(whole.mean() - 0.1) < 0.01 and abs(whole.std() - 0.5) < 0.01
    assert not np.array_equal(whole, synthetic_solvent((0, 0, 0), shape, seed=4, mu=0.1, sigma=0.5))
    assert NOISE_TILE < max(shape)  # several noise tiles were stitched


def test_suppress():
    data = np.array([1.0, 2.0, 3.0], np.float32)
    modified = data * 2
    conf = np.array([0.0, 0.5, 1.0], np.float32)
    assert np.allclose(suppress(modified, data, conf, exclude_solvent=False), [1.0, 3.0, 6.0])
    assert np.allclose(suppress(modified, data, conf, exclude_solvent=True), [0.0, 2.0, 6.0])


# --------------------------------------------------------------------------- settings


def test_amount_and_gamma_spellings():
    def mods(**kw):
        return derive_settings((64,) * 3, 1.5, **kw).modifications

    assert mods(amplify=True, gamma=2.0)[0].exponent == mods(amplify=True, amplify_amount=0.5)[0].exponent
    assert mods(attenuate=True, gamma=2.0)[0].exponent == mods(attenuate=True)[0].exponent == 1.0
    assert mods(amplify=True, gamma=3.0)[0].exponent == -mods(amplify_amount=1 - 1 / 3.0)[0].amount
    assert [m.tag for m in mods(amplify=True, attenuate=True, gamma=2.0, sigmoid=2, pivot=0.3)] == ["ampl_2.0", "attn_2.0", "sigm_2.0-0.30"]
    assert mods(exclude_solvent=True)[0].kind == "exclude"
    assert derive_settings((64,) * 3, 1.5, amplify=True).scale_mode == "occ"  # occupancy mode when modifying
    assert derive_settings((64,) * 3, 1.5, amplify=True, occupancy=False).scale_mode == "res"
    for bad in (
        {"amplify": True, "gamma": 2.0, "amplify_amount": 0.5},
        {"amplify_amount": 1.5},
        {"gamma": 2.0},
        {"amplify": True, "gamma": 1.0},
        {"sigmoid": 2.0},
        {"sigmoid": 2.0, "pivot": 1.2},
        {"sigmoid": 0.5, "pivot": 0.3},
        {"attenuate": True, "amplify_amount": 0.5},
        {"amplify": True, "lowpass_output": 1.0},
    ):
        with pytest.raises(SettingsError):
            derive_settings((64,) * 3, 1.5, **bad)


# --------------------------------------------------------------------------- pipeline


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


def test_api_modify_equals_the_estimate_s_own(phantom64):
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, amplify=True, gamma=2.0) as est:
        own = est.modified(0).compute()
        again = occupy_dask.modify(est, gamma=2.0).compute()
        amount = occupy_dask.modify(est, amount=0.5).compute()
        sig = occupy_dask.modify(est, sigmoid=2.0, pivot=0.3).compute()
        with pytest.raises(SettingsError):
            occupy_dask.modify(est, amount=0.5, sigmoid=2.0, pivot=0.3)
    assert np.array_equal(own, again) and np.array_equal(own, amount)
    assert not np.array_equal(own, sig)


def test_target_occupancy_by_brute_force(phantom64, tmp_path):
    mask = np.zeros_like(phantom64)
    mask[20:30, 25:35, 30:40] = 1.0
    with occupy_dask.estimate(phantom64, voxel_size=1.5, chunks=32, amplify=True, target_mask=mask) as est:
        base = est
        t = est.target_occupancy
        lp = est.sources["scale"][:, :, :]
    with pytest.raises(MapError):
        occupy_dask.estimate(phantom64, voxel_size=1.5, target_mask=mask[:-1])
    n = int(mask.sum())
    tau = tau_for_kernel(n)
    origins, _ = tile_layout(phantom64.shape, base.settings.tile_size, None)
    ts = base.settings.tile_size
    s_max = max(np.sort(lp[z : z + ts, y : y + ts, x : x + ts].ravel())[int(np.floor(tau * ts**3))] for z, y, x in origins)
    assert t.n_voxels == n and t.tau == tau
    assert t.s_max == s_max
    assert t.occupancy == pytest.approx(lp[mask > 0.5].max() / s_max)


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


# --------------------------------------------------------------------------- CLI


def test_cli_several_modifications(golden_dir, tmp_path):
    mask = tmp_path / "target.mrc"
    data = mrcfile.read(golden_dir / "phantom64.mrc")
    target = np.zeros_like(data)
    target[20:30, 25:35, 30:40] = 1
    with mrcfile.new(mask) as m:
        m.set_data(target)
        m.voxel_size = 1.5
    out = tmp_path / "out"
    args = ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(out), "--amplify", "--attenuate", "--gamma", "2"]
    args += ["--sigmoid", "2", "--pivot", "0.3", "--exclude-solvent", "--plot", "--save-all-maps", "--target-mask", str(mask)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    for name in (
        "ampl_2.0_solExcl_out_phantom64.mrc",
        "attn_2.0_solExcl_out_phantom64.mrc",
        "sigm_2.0-0.30_solExcl_out_phantom64.mrc",
        "modfactor_ampl_2.0_phantom64.mrc",
        "lowpass_phantom64.mrc",
        "solModel_phantom64.png",
        "modification_phantom64.png",
        "scale_occ_phantom64.mrc",
    ):
        assert name in names, name
    for png in ("solModel_phantom64.png", "modification_phantom64.png"):
        blob = (out / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(blob) < 2_000_000
    script = (out / "chimX_phantom64.cxc").read_text()
    assert script.count("open ") == 5 and "ampl_2.0_solExcl_out_phantom64.mrc" in script
    assert "target occupancy" in result.output
    assert "Target occupancy" in (out / "log_phantom64.txt").read_text()
    with mrcfile.open(out / "modfactor_ampl_2.0_phantom64.mrc") as f, mrcfile.open(out / "scale_occ_phantom64.mrc") as s:
        assert np.allclose(f.data, power_factor(s.data, -0.5, 0.05))


def test_cli_one_modification_writes_the_output_name(golden_dir, tmp_path):
    result = runner.invoke(app, ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), "--amplify", "-o", "boosted.mrc"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "boosted.mrc").exists()
    result = runner.invoke(app, ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path / "b"), "--exclude-solvent"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "out_phantom64.mrc").exists()


@pytest.mark.parametrize(
    "flags",
    [["--amplify", "--gamma", "2", "--amplify-amount", "0.5"], ["--amplify-amount", "2"], ["--sigmoid", "2"], ["--gamma", "3"]],
)
def test_cli_conflicting_modification_flags_are_usage_errors(golden_dir, tmp_path, flags):
    result = runner.invoke(app, ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), *flags])
    assert result.exit_code == 2
    assert not any(tmp_path.iterdir())


def test_amount_below_minus_one_warns(golden_dir, tmp_path):
    result = runner.invoke(app, ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), "--amplify-amount", "-1.5"])
    assert result.exit_code == 0, result.output
    assert "untested" in result.output


# --------------------------------------------------------------------------- RELION classes


def _class_phantom(occupancy: float, seed: int) -> np.ndarray:
    """Solvent noise with two blobs: one at full occupancy, one at ``occupancy``."""
    z, y, x = np.indices((64,) * 3)
    full = np.exp(-((z - 24) ** 2 + (y - 32) ** 2 + (x - 32) ** 2) / (2 * 6.0**2))
    part = np.exp(-((z - 42) ** 2 + (y - 32) ** 2 + (x - 32) ** 2) / (2 * 6.0**2))
    noise = np.random.default_rng(seed).normal(0, 0.05, full.shape)
    return (full + occupancy * part + noise).astype(np.float32)


def test_relion_classes_end_to_end(tmp_path):
    job = tmp_path / "Class3D" / "job010"
    job.mkdir(parents=True)
    occupancies = [1.0, 0.6, 0.3]
    for k, occ in enumerate(occupancies, start=1):
        with mrcfile.new(job / f"run_it025_class00{k}.mrc") as m:
            m.set_data(_class_phantom(occ, k))
            m.voxel_size = 1.5
    star = job / "run_it025_model.star"
    rows = "\n".join(f"Class3D/job010/run_it025_class00{k}.mrc 0.33" for k in (1, 2, 3))
    star.write_text(
        "data_model_general\n\n_rlnNrClasses 3\n_rlnPixelSize 1.5\n\n"
        f"data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n{rows}\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(out)])
    assert result.exit_code == 0, result.output
    import starfile

    new = starfile.read(out / "run_it025_occupy_model.star", always_dict=True)
    images = list(new["model_classes"]["rlnReferenceImage"])
    assert len(images) == 3 and new["model_general"]["rlnNrClasses"] == 3
    for image in images:
        assert (out / image).is_file() and image.startswith("out_run_it025_class00")
    from occupy_dask.relion import run_relion_classes
    from occupy_dask.settings import RunOptions

    results, _ = run_relion_classes(star, {"amplify": True}, RunOptions(output_dir=tmp_path / "again"))
    medians = [r.median_scale for r in results]
    assert medians[0] > medians[1] > medians[2]  # lower occupancy, lower median confident scale
    assert "median scale" in result.output
    for r in results:
        assert f"{r.median_scale:.3f}" in result.output


def test_relion_class_maps_of_another_box_or_voxel_size_are_refused_before_running(tmp_path):
    for k, (n, voxel) in enumerate([(48, 1.5), (48, 1.5), (40, 1.5)], start=1):
        with mrcfile.new(tmp_path / f"c{k}.mrc") as m:
            m.set_data(np.zeros((n, n, n), np.float32))
            m.voxel_size = voxel
    with mrcfile.new(tmp_path / "c4.mrc") as m:
        m.set_data(np.zeros((48, 48, 48), np.float32))
        m.voxel_size = 2.0
    for bad, message in (("c3.mrc", "shape (40, 40, 40)"), ("c4.mrc", "voxel size (2.0, 2.0, 2.0)")):
        star = tmp_path / "run_model.star"
        star.write_text(f"data_model_classes\n\nloop_\n_rlnReferenceImage #1\nc1.mrc\nc2.mrc\n{bad}\n")
        result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(tmp_path / "o")])
        assert result.exit_code == 1 and bad in result.output and message in result.output, result.output
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing ran


def test_relion_star_without_classes_table(tmp_path):
    star = tmp_path / "bad_model.star"
    star.write_text("data_model_general\n\n_rlnNrClasses 3\n")
    result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "model_classes" in result.output


def test_relion_classes_need_one_modification(tmp_path):
    star = tmp_path / "run_model.star"
    star.write_text("data_model_classes\n\nloop_\n_rlnReferenceImage #1\nmissing.mrc\n")
    result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(tmp_path / "o"), "--amplify", "--attenuate"])
    assert result.exit_code == 2
    assert "one modification" in result.output
    result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(tmp_path / "o")])
    assert result.exit_code == 1 and "missing.mrc" in result.output  # a class map that is not there
    for flags in (["--format", "zarr"], ["-o", "x.mrc"]):
        result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(tmp_path / "o"), *flags])
        assert result.exit_code == 2 and "drop -o/--format" in result.output
