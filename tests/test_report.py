"""report.py: plot data and the log."""

import re
import shutil

import numpy as np
import pytest

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


def cxc_commands(text: str) -> list[list[str]]:
    """The commands ChimeraX reads from a .cxc: each line is a command, ``;`` outside a token
    separates commands, a double-quoted token ends at the first quote followed by whitespace or
    the end of the line (a backslash does not protect it)."""
    commands = []
    for line in text.split("\n"):
        if line.lstrip().startswith("#"):
            continue
        current: list[str] = []
        parts = [current]
        i = 0
        while i < len(line):
            c = line[i]
            if c.isspace():
                i += 1
            elif c == ";":
                current = []
                parts.append(current)
                i += 1
            elif c == '"':
                j = i + 1
                while j < len(line) and not (line[j] == '"' and (j + 1 == len(line) or line[j + 1].isspace())):
                    j += 1
                current.append(line[i + 1 : j])
                i = j + 1
            else:
                j = i
                while j < len(line) and not line[j].isspace() and line[j] != ";":
                    j += 1
                current.append(line[i:j])
                i = j
        commands += [part for part in parts if part]
    return commands


HOSTILE = [
    'q" ; runscript evil.py ; echo "x',
    "semi;colon",
    "hash#name",
    "new\nline",
    "space name",
    "ünïcödé µ",
    "star*",
    'quote"d',
    "~tilde",
    "tab\tname",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_file_name_never_becomes_a_command(tmp_path, data_dir, name):
    from occupy_dask.api import run_map
    from occupy_dask.settings import RunOptions

    source = tmp_path / "in" / f"{name}.map"
    source.parent.mkdir()
    shutil.copy(data_dir / "emd_1832.map", source)
    out = tmp_path / "out"
    result = run_map(source, RunOptions(output_dir=out), amplify=True)
    script = out / f"chimX_{name}.cxc"
    if "chimerax" not in result.outputs:  # refused to write it, and said why
        assert not script.exists()
        assert any("no ChimeraX script" in w and "cannot be written safely" in w for w in result.estimate.warnings)
        assert any(c in name for c in '"*\n\t')
        return
    commands = cxc_commands(script.read_text(encoding="utf-8"))
    assert {c[0] for c in commands} <= {"open", "volume", "color", "hide", "view", "lighting", "key"}, commands
    opened = [c for c in commands if c[0] == "open"]
    assert len(opened) == 3 and all(len(c) == 4 and c[2] == "name" for c in opened), opened
    names = {c[3] for c in opened}
    for command in commands:  # models are picked by the names the script gave them, never by number
        for word in command[1:]:
            assert not re.fullmatch(r"#\d+(\.\d+)*", word), command
            if word.startswith("##name="):
                assert word.removeprefix("##name=") in names, command
    moved = tmp_path / "copied"  # the result folder copied elsewhere: the script still finds its maps
    shutil.copytree(out, moved / "out")
    shutil.copytree(source.parent, moved / "in")
    for _, path, _, _ in opened:
        assert not path.startswith("~") and (moved / "out" / path).resolve().is_file(), path


def test_the_chimerax_level_encloses_the_confident_content(tmp_path, golden_dir):
    import mrcfile

    from occupy_dask.api import run_map
    from occupy_dask.settings import RunOptions

    result = run_map(golden_dir / "phantom96.mrc", RunOptions(output_dir=tmp_path), chunks=40)
    est = result.estimate
    data = mrcfile.read(golden_dir / "phantom96.mrc")
    confidence = mrcfile.read(tmp_path / "conf_phantom96.mrc")
    assert est.confident_voxels == np.count_nonzero(confidence > 0.5)
    bin_width = (data.max() - data.min()) / 1000
    above = np.count_nonzero(data >= est.display_level)
    assert above >= est.confident_voxels > np.count_nonzero(data >= est.display_level + bin_width)  # to one histogram bin
    assert f"_input level {est.display_level:.6g} style surface" in (tmp_path / "chimX_phantom96.cxc").read_text()
    assert "ChimeraX level" in (tmp_path / "log_phantom96.txt").read_text()


def test_min_vis_scale_sets_the_colouring_and_its_drawn_key(tmp_path, golden_dir):
    from occupy_dask.api import run_map
    from occupy_dask.settings import RunOptions

    default = run_map(golden_dir / "phantom64.mrc", RunOptions(output_dir=tmp_path / "a"), chunks=32)
    chosen = run_map(golden_dir / "phantom64.mrc", RunOptions(output_dir=tmp_path / "b", min_vis_scale=0.35), chunks=32)
    for result, low in ((default, default.estimate.confidence_limit), (chosen, 0.35)):
        commands = cxc_commands(result.outputs["chimerax"].read_text())
        (palette,) = [c[c.index("palette") + 1] for c in commands if c[:2] == ["color", "sample"]][:1]
        stops = [float(p.split(",")[0]) for p in palette.split(":")]
        assert stops[0] == pytest.approx(low, abs=5e-5) and stops[-1] == 1.0
        (key,) = [c for c in commands if c[0] == "key"]
        labels = [w.split(":", 1)[1] for w in key[1:] if w.startswith("#")]
        assert labels[0] == f"{low:.2f}" and labels[-1] == "1.00" and len(labels) == len(stops)
    log = (tmp_path / "b" / "log_phantom64.txt").read_text()
    assert re.search(r"ChimeraX colour key from\s+\[scale\]\s+0\.3500 \(--min-vis-scale\)", log), log
