"""relion.py: --relion-classes end to end and its refusals."""

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from occupy_dask.cli import app

runner = CliRunner()


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
        "\n# version 30001\n\ndata_model_general\n\n_rlnNrClasses 3\n_rlnPixelSize 1.5\n\n"
        f"data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n{rows}\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["--relion-classes", str(star), "-d", str(out)])
    assert result.exit_code == 0, result.output
    import starfile

    new = starfile.read(out / "run_it025_occupy_model.star", always_dict=True)
    images = list(new["model_classes"]["rlnReferenceImage"])
    assert len(images) == 3 and new["model_general"]["rlnNrClasses"] == 3
    for image in images:  # relative to the RELION project folder, as RELION writes them
        assert (tmp_path / image).is_file() and image.startswith("out/out_run_it025_class00")
    assert (out / "run_it025_occupy_model.star").read_text().lstrip().startswith("# version 30001")
    from occupy_dask.relion import run_relion_classes
    from occupy_dask.settings import RunOptions

    results, _ = run_relion_classes(star, {"amplify": True}, RunOptions(output_dir=tmp_path / "again", report=True))
    medians = [r.median_scale for r in results]
    assert medians[0] > medians[1] > medians[2]  # lower occupancy, lower median confident scale
    table = (tmp_path / "again" / "report_run_it025_classes.html").read_text()  # --report: the class table, linked
    for r in results:
        assert f"{r.median_scale:.3f}" in table and f'href="report_{r.source.stem}.html"' in table
        assert (tmp_path / "again" / f"report_{r.source.stem}.html").is_file()
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


def test_relion_classes_with_one_file_name_in_two_folders_stacks_and_existing_outputs(tmp_path):
    from occupy_dask.errors import MapError
    from occupy_dask.relion import run_relion_classes
    from occupy_dask.settings import RunOptions

    job = tmp_path / "Refine3D" / "job020"
    for k, folder in enumerate(("a", "b"), start=1):
        (job / folder).mkdir(parents=True)
        with mrcfile.new(job / folder / "class.mrc") as m:
            m.set_data(_class_phantom((1.0, 0.5)[k - 1], k))
            m.voxel_size = 1.5
    star = job / "run_model.star"
    star.write_text(
        "\n# version 30001\n\ndata_model_general\n\n_rlnNrClasses 2\n\n"
        "data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
        "Refine3D/job020/a/class.mrc 0.5\nRefine3D/job020/b/class.mrc 0.5\n\n"
        "data_model_class_1\n\nloop_\n_rlnSpectralIndex #1\n_rlnResolution #2\n0 0.0\n1 0.01\n"
    )
    results, new_star = run_relion_classes(star, {"amplify": True}, RunOptions(output_dir=tmp_path / "out"))
    modified = [r.modified.name for r in results]
    assert modified == ["out_class_class001.mrc", "out_class_class002.mrc"]  # distinct, nothing overwritten
    text = new_star.read_text()
    assert text.lstrip().startswith("# version 30001") and "data_model_class_1" in text and "_rlnSpectralIndex" in text
    # run again without --overwrite: refused before any class runs, nothing touched
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    new_star.unlink()
    with pytest.raises(MapError, match="output exists .* no class was run"):
        run_relion_classes(star, {"amplify": True}, RunOptions(output_dir=tmp_path / "out"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == {k: v for k, v in before.items() if k != new_star.name}
    stack = job / "stack_model.star"
    stack.write_text("data_model_classes\n\nloop_\n_rlnReferenceImage #1\n000001@Class2D/job005/run_classes.mrcs\n")
    with pytest.raises(MapError, match="image in a stack"):
        run_relion_classes(stack, {"amplify": True}, RunOptions(output_dir=tmp_path / "stack"))
