"""io/read.py over MRC headers (property-based): every mode, byte order, extended header, axis
permutation and start index gives the scale map of the plain float32 little-endian map with the
same values, and a header that lies about its data is one clear error."""

import mrcfile
import mrcfile.utils
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mrcfile.dtypes import HEADER_DTYPE

import occupy_dask
from occupy_dask.errors import MapError

pytestmark = pytest.mark.slow  # many runs of the method

SHAPE = (20, 24, 28)  # sections, rows, columns
MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def _values(mode: int) -> np.ndarray:
    """A small map with solvent noise and density, integer-valued so that every mode holds it exactly."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(SHAPE)
    blob = np.exp(-((z - 10) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) / 20.0)
    data = np.round(rng.normal(0, 4, SHAPE) + 90 * blob)
    return (data + 30 if mode == 6 else data).astype(MODES[mode])  # uint16 holds no negative value


def _write(path, data: np.ndarray, *, mode: int, byte_order: str, ext: int, order=(1, 2, 3), start=(0, 0, 0), lie: str | None = None):
    """Write an MRC file byte by byte: header (in ``byte_order``), ``ext`` bytes of extended header, data."""
    header = np.zeros((), dtype=HEADER_DTYPE.newbyteorder(byte_order))
    nz, ny, nx = data.shape
    header["nx"], header["ny"], header["nz"] = nx, ny, nz
    header["mode"] = mode
    header["nxstart"], header["nystart"], header["nzstart"] = start
    header["mx"], header["my"], header["mz"] = nx, ny, nz
    header["cella"]["x"], header["cella"]["y"], header["cella"]["z"] = 2.0 * nx, 2.0 * ny, 2.0 * nz
    header["cellb"]["alpha"] = header["cellb"]["beta"] = header["cellb"]["gamma"] = 90.0
    header["mapc"], header["mapr"], header["maps"] = order
    header["ispg"] = 1
    header["nsymbt"] = ext
    header["nversion"] = 20140
    header["map"] = b"MAP "
    header["machst"] = np.frombuffer(mrcfile.utils.machine_stamp_from_byte_order(byte_order), dtype=np.uint8)
    body = data.astype(data.dtype.newbyteorder(byte_order)).tobytes()
    if lie == "more data":  # the header promises one plane more than the file holds
        header["nz"] = nz + 1
    elif lie == "extended header":  # an extended header longer than the file
        header["nsymbt"] = len(body) + 4096
    elif lie == "trailing bytes":  # the truth, plus bytes after the data
        body += b"\0" * 333
    path.write_bytes(header.tobytes() + b"\xab" * ext + body)


def _scale(path) -> np.ndarray:
    with occupy_dask.estimate(path, chunks=8) as est:
        return est.scale.compute()


@pytest.fixture(scope="module")
def plain_scales(tmp_path_factory):
    """The scale map of each mode's values as a plain float32 little-endian MRC."""
    folder = tmp_path_factory.mktemp("plain")
    scales = {}
    for mode in MODES:
        path = folder / f"plain{mode}.mrc"
        mrcfile.write(path, _values(mode).astype(np.float32), voxel_size=2.0)
        scales[mode] = _scale(path)
    return scales


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(sorted(MODES)),
    byte_order=st.sampled_from(["<", ">"]),
    ext=st.sampled_from([0, 80, 1024, 4000]),
    order=st.permutations([1, 2, 3]),
    start=st.tuples(*[st.integers(-50, 50)] * 3),
    lie=st.sampled_from([None, None, "trailing bytes", "more data", "extended header"]),
)
def test_a_header_gives_the_plain_map_s_scale_or_one_clear_error(tmp_path_factory, plain_scales, mode, byte_order, ext, order, start, lie):
    path = tmp_path_factory.mktemp("header") / "m.mrc"
    _write(path, _values(mode), mode=mode, byte_order=byte_order, ext=ext, order=tuple(order), start=start, lie=lie)
    if lie in ("more data", "extended header"):
        with pytest.raises(MapError) as error:
            _scale(path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)
        return
    assert np.array_equal(_scale(path), plain_scales[mode])
