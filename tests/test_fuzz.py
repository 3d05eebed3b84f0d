"""Random and mutated MRC headers: never a traceback, always a clear error or a result."""

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from occupy_dask.cli import app

pytestmark = pytest.mark.slow  # processes, clusters, many runs

runner = CliRunner()


def _valid_map(path):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 0.05, size=(24, 24, 24)).astype(np.float32)
    z, y, x = np.indices(data.shape)
    data += np.exp(-((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) / 18.0).astype(np.float32)
    mrcfile.write(path, data, voxel_size=2.0, overwrite=True)
    return path.read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.one_of(st.integers(0, 223), st.integers(0, 1023)), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 24 * 24 * 24 * 4 + 1024)),
)
def test_mutated_headers_give_a_clear_error_or_a_result(tmp_path_factory, edits, cut):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "m.mrc"
    blob = bytearray(_valid_map(path))
    for offset, value in edits:
        blob[offset] = value
    if cut is not None:
        blob = blob[:cut]
    path.write_bytes(bytes(blob))
    before = path.read_bytes()
    result = runner.invoke(app, ["-i", str(path), "-d", str(folder / "out"), "-q"])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert path.read_bytes() == before
    out = folder / "out"
    if result.exit_code == 0:
        assert (out / "scale_res_m.mrc").exists() and (out / "conf_m.mrc").exists()
    else:
        assert "error:" in result.output
        assert not out.exists() or not any(out.iterdir())  # nothing half-written left behind
