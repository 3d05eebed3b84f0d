"""cli.py: the command line as a user runs it."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

import occupy_dask
from occupy_dask import __version__
from occupy_dask.cli import app
from occupy_dask.io.read import MapError
from occupy_dask.kernels.modify import (
    power_factor,
)


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


runner = CliRunner()


@pytest.fixture
def emd1832(data_dir, tmp_path):
    path = tmp_path / "in put" / "emd_1832.map"  # a space in the path: the ChimeraX script must quote it
    path.parent.mkdir()
    shutil.copy(data_dir / "emd_1832.map", path)
    return path


def test_end_to_end_on_emd_1832(emd1832, tmp_path):
    out = tmp_path / "out dir"
    before = emd1832.read_bytes()
    result = runner.invoke(app, ["-i", str(emd1832), "--output-dir", str(out), "--verbose"])
    assert result.exit_code == 0, result.output
    assert "Full scale s_max" in result.output and "Confidence limit" in result.output
    assert emd1832.read_bytes() == before  # input untouched
    names = sorted(p.name for p in out.iterdir())
    assert names == ["chimX_emd_1832.cxc", "conf_emd_1832.mrc", "log_emd_1832.txt", "scale_res_emd_1832.mrc"]
    with mrcfile.open(out / "scale_res_emd_1832.mrc") as scale, mrcfile.open(emd1832, permissive=True) as ref:
        for key in ("nxstart", "nystart", "nzstart", "mapc", "mapr", "maps", "mx", "my", "mz"):
            assert scale.header[key] == ref.header[key], key
        assert scale.voxel_size == ref.voxel_size
        labels = b"".join(scale.header.label[: scale.header.nlabl])
        assert f"occupy_dask {__version__}".encode() in labels
        data = scale.data
        assert 0.0 <= data.min() and data.max() == 1.0
        assert scale.header.dmax == pytest.approx(data.max()) and scale.header.dmin == pytest.approx(data.min())
        assert scale.header.dmean == pytest.approx(data.mean(), rel=1e-5)
        assert scale.header.rms == pytest.approx(data.std(), rel=1e-4)
    script = (out / "chimX_emd_1832.cxc").read_text()
    assert f'open "{os.path.relpath(emd1832, out)}" name occupy_' in script  # relative to the script's folder
    assert re.search(r"color sample ##name=occupy_[0-9a-f]{6}_input map ##name=occupy_[0-9a-f]{6}_scale palette", script), script
    log = (out / "log_emd_1832.txt").read_text()
    for key in (
        "Tau",
        "Kernel n_v",
        "Full scale s_max",
        "Solvent peak mu",
        "Solvent edge",
        "Confidence limit",
        "Variability limit",
        "Best tile",
    ):
        assert key in log


def test_outputs_independent_of_chunks_through_the_cli(emd1832, tmp_path):
    for c in (16, 64):
        assert runner.invoke(app, ["-i", str(emd1832), "-d", str(tmp_path / str(c)), "--chunks", str(c), "-q"]).exit_code == 0
    for name in ("scale_res_emd_1832.mrc", "conf_emd_1832.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "16" / name), mrcfile.read(tmp_path / "64" / name))


def test_anisotropic_non_standard_axis_order_emd_3001(data_dir, tmp_path):
    result = runner.invoke(app, ["-i", str(data_dir / "emd_3001.map"), "-d", str(tmp_path), "--save-all-maps"])
    assert result.exit_code == 0, result.output
    with (
        mrcfile.open(tmp_path / "scale_res_emd_3001.mrc") as out,
        mrcfile.open(data_dir / "emd_3001.map", permissive=True) as ref,
    ):
        assert out.data.shape == (25, 43, 73)
        for key in ("mapc", "mapr", "maps", "nxstart", "nystart", "nzstart", "mx", "my", "mz"):
            assert out.header[key] == ref.header[key]
        assert out.voxel_size == ref.voxel_size
    assert (tmp_path / "lowpass_emd_3001.mrc").exists()


def test_solvent_flattened_map_fails_clearly(data_dir, tmp_path):
    result = runner.invoke(app, ["-i", str(data_dir / "emd_3488.mrc"), "-d", str(tmp_path)])
    assert result.exit_code == 1
    assert "solvent-flattened" in result.output and "emd_3488.mrc" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_usage_errors_exit_2(emd1832, tmp_path):
    assert runner.invoke(app, ["-i", str(emd1832), "--kernel-size", "4", "-d", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["-i", str(emd1832), "--tau", "1.5", "-d", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["--no-such-flag"]).exit_code == 2
    assert runner.invoke(app, []).exit_code == 2


def test_refuses_to_overwrite(emd1832, tmp_path):
    assert runner.invoke(app, ["-i", str(emd1832), "-d", str(tmp_path)]).exit_code == 0
    again = runner.invoke(app, ["-i", str(emd1832), "-d", str(tmp_path)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert runner.invoke(app, ["-i", str(emd1832), "-d", str(tmp_path), "--overwrite"]).exit_code == 0


def test_refuses_output_equal_to_input(tmp_path, data_dir):
    victim = tmp_path / "conf_x.mrc"
    shutil.copy(data_dir / "emd_1832.map", victim)
    (tmp_path / "x.mrc").symlink_to(victim)
    result = runner.invoke(app, ["-i", str(victim.parent / "x.mrc"), "-d", str(tmp_path), "--overwrite"])
    assert result.exit_code == 1 and "overwrite an input" in result.output


def test_bad_input_file(tmp_path):
    bad = tmp_path / "notes.mrc"
    bad.write_text("not a map\n" * 200)
    result = runner.invoke(app, ["-i", str(bad), "-d", str(tmp_path / "o")])
    assert result.exit_code == 1 and "notes.mrc" in result.output and "not" in result.output


def test_version_and_module_entry_point():
    assert __version__ in runner.invoke(app, ["--version"]).output
    proc = subprocess.run([sys.executable, "-m", "occupy_dask", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_the_version_is_the_installed_packages_and_read_without_its_metadata():
    from importlib.metadata import version

    assert version("occupy-dask") == __version__  # pyproject.toml takes it from occupy_dask/version.py
    script = "import sys; import occupy_dask.cli; print('importlib.metadata' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split() == ["False"]


def test_quiet_prints_nothing_and_default_lists_outputs(emd1832, tmp_path):
    quiet = runner.invoke(app, ["-i", str(emd1832), "-d", str(tmp_path / "q"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
    normal = runner.invoke(app, ["-i", str(emd1832), "-d", str(tmp_path / "n")])
    assert normal.exit_code == 0 and "scale_res_emd_1832.mrc" in normal.output and "Full scale" not in normal.output


def test_profile_prints_stage_timings(golden_dir, tmp_path):
    result = runner.invoke(app, ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), "--occupancy", "--profile"])
    assert result.exit_code == 0, result.output
    for stage in ("stage timings", "low-pass", "reductions", "local scale", "total"):
        assert stage in result.output
    assert "histograms" not in result.output  # taken in the first pass: the ranges came with the low-pass
    with_mask = runner.invoke(
        app, ["-i", str(golden_dir / "phantom96.mrc"), "--solvent-def", str(golden_dir / "soldef96.mrc"), "-d", str(tmp_path / "m"), "--profile"]
    )
    assert with_mask.exit_code == 0 and "histograms" in with_mask.output  # the solvent region is known after pass one


def test_nonfinite_voxels_are_counted_in_a_clear_error(golden_dir, tmp_path):
    data = mrcfile.read(golden_dir / "phantom64.mrc").copy()
    data[1, 2, 3] = np.nan
    data[4, 5, 6:8] = np.inf
    path = tmp_path / "bad.mrc"
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile warns while writing the bad map
        mrcfile.write(path, data, voxel_size=1.5)
    result = runner.invoke(app, ["-i", str(path), "-d", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "1 NaN and 2 infinite voxels" in result.output and "Traceback" not in result.output
    assert "--allow-nonfinite" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    result = runner.invoke(app, ["-i", str(path), "-d", str(tmp_path / "out"), "--allow-nonfinite"])
    assert result.exit_code == 0, result.output
    assert "replaced 3 NaN or infinite voxels with the median" in result.output
    assert np.isfinite(mrcfile.read(tmp_path / "out" / "scale_res_bad.mrc")).all()


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_pure_noise_map_fails_clearly(tmp_path, noise):
    rng = np.random.default_rng(3)
    data = rng.normal(0, 1, (64, 64, 64)) if noise == "gaussian" else rng.uniform(-1, 1, (64, 64, 64))
    path = tmp_path / "noise.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data.astype(np.float32))
        m.voxel_size = 1.5
    before = path.read_bytes()
    result = runner.invoke(app, ["-i", str(path), "-d", str(tmp_path / "out"), "--amplify"])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "noise.mrc" in line and "pure noise" in line and "--solvent-def" in line and "--lowpass" in line
    assert path.read_bytes() == before
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_api_refuses_a_mask_file_of_another_voxel_size(tmp_path, data_dir):

    mask = tmp_path / "mask.mrc"
    with mrcfile.new(mask) as m:
        m.set_data(np.ones((64, 64, 64), np.float32))
        m.voxel_size = 2.0
    with pytest.raises(MapError, match=r"voxel size \(2.0, 2.0, 2.0\) Å differs from the map's \(5.7, 5.7, 5.7\) Å"):
        occupy_dask.estimate(data_dir / "emd_1832.map", solvent_def=mask)


def test_a_full_disk_is_one_clear_error_and_leaves_no_partial_output(emd1832, tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out"
    result = runner.invoke(app, ["-i", str(emd1832), "-d", str(out), "--amplify"])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "emd_1832.map" in line and "No space left on device" in line and "Traceback" not in result.output
    assert not out.exists()  # nothing half-written, and the folder the run made is gone
    monkeypatch.undo()  # the disk has room again: the next run in this process is not touched by the failed one
    again = runner.invoke(app, ["-i", str(emd1832), "-d", str(out), "--amplify", "-q"])
    assert again.exit_code == 0, again.output


def test_sigterm_ends_a_run_like_ctrl_c_and_removes_temporaries(tmp_path, golden_dir):
    import gzip
    import signal
    import time

    data = np.tile(mrcfile.read(golden_dir / "phantom96.mrc"), (2, 2, 2))  # 192^3
    plain = tmp_path / "big.mrc"
    with mrcfile.new(plain) as m:
        m.set_data(data)
        m.voxel_size = 1.1
    path = tmp_path / "big.mrc.gz"  # decompressed into --temp-dir for the run
    path.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    temp, out = tmp_path / "temp", tmp_path / "out"
    temp.mkdir()
    cmd = [sys.executable, "-m", "occupy_dask", "-i", str(path), "-d", str(out), "--temp-dir", str(temp), "--chunks", "24", "--amplify"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(temp.iterdir()):
        time.sleep(0.01)
    time.sleep(0.5)  # into the computation
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert "terminated; no output was left half-written" in err
    assert list(temp.iterdir()) == []
    assert not out.exists()  # the folder the run made is gone too


def test_help_shows_units_in_panels(tmp_path):
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    shown = subprocess.run([sys.executable, "-m", "occupy_dask", "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
    for unit in ("[Å]", "[voxels, odd >= 3]", "[voxels]", "[confidence limit, 1]", "out_<name>.mrc"):
        assert unit in shown, unit
    assert "[default: 0.05]" not in shown and "[default: SW]" not in shown  # a default the text gives is not repeated
    assert "…" not in shown  # no flag name cut short
    panels = [line for line in shown.splitlines() if line.startswith("╭─")]
    assert [p.split()[1] for p in panels] == ["Options", "Input", "Estimation", "Modification", "Outputs", "Compute"]


def test_occupy_spellings_are_understood_or_refused_with_the_reason(tmp_path, data_dir, cli):
    mapped = cli("-i", data_dir / "emd_1832.map", "-d", "a", "-q", "--amplify", "2", "--output_map", "g.mrc", cwd=tmp_path)
    assert mapped.returncode == 0, mapped.stderr
    assert "read as --amplify --gamma 2" in mapped.stderr and (tmp_path / "a" / "g.mrc").is_file()
    same = cli("-i", data_dir / "emd_1832.map", "-d", "b", "-q", "--amplify", "--gamma", "2", "-o", "g.mrc", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert np.array_equal(mrcfile.read(tmp_path / "a" / "g.mrc"), mrcfile.read(tmp_path / "b" / "g.mrc"))
    short = cli("-i", data_dir / "emd_1832.map", "-d", "c", "-q", "-am", "2", "-at", "2", cwd=tmp_path)
    assert short.returncode == 0 and (tmp_path / "c" / "attn_2.0_out_emd_1832.mrc").is_file()
    for flags, reason in (
        (("--amplify", "2", "--attenuate", "3"), "need two runs"),
        (("--emdb", "11007"), "give one input"),
        (("--max-box", "63"), "even"),
        (("--min-vis-scale", "1.5"), "--min-vis-scale must lie in [0, 1)"),
        (("--subtraction-mask", "--amplify"), "needs --attenuate or --sigmoid"),
    ):
        refused = cli("-i", data_dir / "emd_1832.map", "-d", "d", *flags, cwd=tmp_path)
        assert refused.returncode == 2 and reason in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "Usage" in cli("--help-all", cwd=tmp_path).stdout


def test_occupy_features_write_what_occupy_writes(tmp_path, golden_dir, cli):
    """--S0 names the scale map as OccuPy does; --subtraction-mask writes the GUI's masks;
    --keep-output-path writes beside the input; --chimerax-silent writes the script only."""
    source = tmp_path / "maps" / "phantom64.mrc"
    source.parent.mkdir()
    shutil.copy(golden_dir / "phantom64.mrc", source)
    flags = ("--S0", "--attenuate", "--gamma", "2", "--sigmoid", "2", "--pivot", "0.3", "--subtraction-mask", "--chimerax-silent")
    done = cli("-i", source, "--keep-output-path", "--no-chimerax", *flags, cwd=tmp_path)  # --chimerax-silent writes the script anyway
    assert done.returncode == 0, done.stderr
    beside = source.parent
    for name in ("scale_naive_occ_phantom64.mrc", "subtraction_mask_attn_2_phantom64.mrc", "subtraction_mask_sigm_0.3.2_phantom64.mrc"):
        assert (beside / name).is_file(), sorted(p.name for p in beside.iterdir())
    assert (beside / "chimX_phantom64.cxc").is_file() and not list(tmp_path.glob("*.mrc"))
    mask = mrcfile.read(beside / "subtraction_mask_attn_2_phantom64.mrc")
    assert mask.shape == (64, 64, 64) and 0.0 <= mask.min() < mask.max() <= 1.0
    assert "subtraction mask (attenuated, amount -1)" in done.stdout
    log = (beside / "log_phantom64.txt").read_text()
    assert "S0: tau x the largest scale-data value" in log and "Best tile" not in log


def test_show_chimerax_opens_the_script_or_says_why_not(tmp_path, data_dir, cli):
    args = ("-i", data_dir / "emd_1832.map", "--show-chimerax")
    missing = cli(*args, "-d", "a", cwd=tmp_path, env={"PATH": os.path.dirname(sys.executable)})
    assert missing.returncode == 0, missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == f"ChimeraX is not on PATH; open {Path('a') / 'chimX_emd_1832.cxc'} in it to see the result"
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "chimerax"  # records what it was asked to open
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "opened.txt"}\n')
    fake.chmod(0o755)
    shown = cli(*args, "-d", "b", "--no-chimerax", cwd=tmp_path, env={"PATH": f"{tools}:{os.environ['PATH']}"})  # it writes the script anyway
    assert shown.returncode == 0, shown.stderr
    assert "opening" in shown.stdout and "in ChimeraX" in shown.stdout
    for _ in range(100):
        if (tmp_path / "opened.txt").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / "opened.txt").read_text().strip() == str(tmp_path / "b" / "chimX_emd_1832.cxc")


def test_second_spellings_are_read_as_the_first():
    from occupy_dask.cli import translate_occupy_spellings

    args, notes = translate_occupy_spellings(["--lowpass-output=9", "--no-save-chimerax", "--save-chimerax", "--lowpass-output", "7"])
    assert args == ["--lowpass-amplified=9", "--no-chimerax", "--chimerax", "--lowpass-amplified", "7"] and notes == []


def _libraries_imported_by(argv: list[str], libraries: set[str], timeout: int = 60) -> list[str]:
    """Which of ``libraries`` (top-level packages) the command line ``argv`` imports, run to its
    end in a fresh interpreter (an exit with an error fails the test)."""
    probe = (
        f"import sys, runpy; sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('occupy_dask', run_name='__main__')\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"import json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(libraries)!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_none_of_the_method_s_libraries(flag):
    """``--help`` and ``--version`` answer without numpy, dask, numba, scipy, zarr or matplotlib
    (the start-up of a run is theirs alone)."""
    heavy = {"numpy", "dask", "numba", "scipy", "zarr", "matplotlib", "distributed"}
    assert _libraries_imported_by(["occupy-dask", flag], heavy) == []


def test_a_local_run_imports_only_the_method_s_libraries(emd1832, tmp_path):
    """A run on this machine's threads leaves the other paths' libraries unimported: the cluster
    (distributed, dask-jobqueue), the plots and the report (matplotlib, bokeh), zarr, RELION's star
    files, and pydantic, which typer 0.29 imports to coerce every option (0.12-0.14 s per run; see
    pyproject.toml)."""
    others = {"distributed", "dask_jobqueue", "matplotlib", "bokeh", "zarr", "ome_zarr", "starfile", "pydantic"}
    argv = ["occupy-dask", "-i", str(emd1832), "-d", str(tmp_path / "out"), "-q", "--amplify"]
    assert _libraries_imported_by(argv, others, timeout=120) == []
    assert (tmp_path / "out" / "out_emd_1832.mrc").exists()
