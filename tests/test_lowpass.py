import dask.array as da
import mrcfile
import numpy as np
import pytest

from occupy_dask import lowpass as lowpass_stage
from occupy_dask.lowpass import lowpass, lowpass_numpy


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(lowpass_stage, "TARGET_BLOCK_BYTES", 150_000)  # many slabs and pencils


@pytest.mark.parametrize("reference", [False, True])
def test_pencil_fft_equals_whole_array_fft(golden_dir, small_blocks, reference):
    data = mrcfile.read(golden_dir / "phantom96.mrc").astype(np.float32)
    expected = lowpass_numpy(data, (1.1,) * 3, 8.0, reference)
    got = lowpass(da.from_array(data, chunks=16), (1.1,) * 3, 8.0, reference).compute()
    # the 1D transforms run in the whole-array order on whole lines: bit-identical
    assert np.array_equal(got, expected)
    assert lowpass(da.from_array(data, chunks=16), (1.1,) * 3, 8.0).numblocks[0] > 1


def test_non_cubic_odd_anisotropic(small_blocks):
    data = np.random.default_rng(3).normal(size=(25, 43, 73)).astype(np.float32)
    vs = (0.3925, 0.448, 0.4587)
    expected = lowpass_numpy(data, vs, 2.0)
    got = lowpass(da.from_array(data, chunks=(7, 43, 73)), vs, 2.0).compute()
    assert got.shape == data.shape and got.dtype == np.float32
    assert np.array_equal(got, expected)


def test_lowpass_removes_high_frequencies():
    z, y, x = np.indices((32, 32, 32))
    low = np.cos(2 * np.pi * z / 32).astype(np.float32)
    high = np.cos(2 * np.pi * 10 * x / 32).astype(np.float32)
    out = lowpass_numpy(low + high, (1.0,) * 3, 8.0)  # keeps |k| <= 1/8: 1/32 kept, 10/32 removed
    assert np.allclose(out, low, atol=1e-5)


@pytest.mark.parametrize(
    "shape, voxel, lowpass_a, reference",
    [
        ((40, 40, 40), (1.0,) * 3, 2.05, False),  # cutoff just below Nyquist: almost nothing pruned
        ((33, 20, 47), (0.9, 1.3, 1.1), 5.0, False),
        ((48, 48, 48), (1.2,) * 3, 3.0, True),
        ((50, 50, 50), (1.0,) * 3, 30.0, True),  # a handful of frequencies kept
        ((31, 64, 18), (2.0, 0.5, 1.0), 9.0, False),
    ],
)
def test_pruned_pencils_equal_the_whole_array_transform(monkeypatch, shape, voxel, lowpass_a, reference):
    monkeypatch.setattr(lowpass_stage, "TARGET_BLOCK_BYTES", 40_000)
    data = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    expected = lowpass_numpy(data, voxel, lowpass_a, reference)
    got = lowpass(da.from_array(data, chunks=(shape[0], 7, shape[2])), voxel, lowpass_a, reference).compute()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    ("shape", "voxel", "reference"),
    [((25, 43, 73), (0.3925, 0.448, 0.4587), False), ((40, 40, 40), (1.0, 1.0, 1.0), True)],
)
def test_the_lowpassed_map_read_from_its_filtered_spectrum_is_the_lowpassed_map(tmp_path, small_blocks, monkeypatch, shape, voxel, reference):
    """Every block read from the spilled filtered spectrum (whole slabs, slabs with a halo and
    rows and columns of them, in reads and transforms of a few planes) holds the whole-array
    low-pass's bits."""
    import dask

    from occupy_dask import scratch

    data = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    spiller = scratch.Spiller(tmp_path, lambda *objs, label="": dask.compute(*objs))
    lowpass(da.from_array(data, chunks=lowpass_stage.input_chunks(shape, 150_000)), voxel, 2.5, reference, slab_planes=8, spill=spiller)
    filtered = spiller.stores["filtered"]
    assert filtered.shape == (*shape[:2], lowpass_stage.lowpass_support(shape, voxel, 2.5, reference)[2]) and filtered.shape[2] < shape[2] // 2
    source = scratch.LowpassOnRead(filtered.path, shape, filtered.shape[2])
    expected = lowpass_numpy(data, voxel, 2.5, reference)
    monkeypatch.setattr(scratch, "GROUP_BYTES", 3 * shape[1] * filtered.shape[2] * 8)  # three planes read at a time
    monkeypatch.setattr(scratch, "LINES_BYTES", 2 * shape[1] * (shape[2] // 2 + 1) * 8)  # two transformed at a time
    assert np.array_equal(source[:, :, :], expected)
    for key in ((slice(3, 21), slice(None), slice(None)), (slice(5, 17), slice(4, 30), slice(7, 33))):
        assert np.array_equal(source[key], expected[key])
        out = np.full([k.indices(n)[1] - k.indices(n)[0] for k, n in zip(key, shape)], np.nan, np.float32)
        assert source.read_into(key, out, keep_from=key[0].stop - 2) is out and np.array_equal(out, expected[key])


def test_the_first_stage_reads_the_map_in_whole_planes():
    """The low-pass reads its input as every later pass does, front to back in blocks of whole
    planes (a block of rows from every plane would be thousands of small reads of a cold file),
    each voxel once, and still gives the whole-array transform's bits."""
    data = np.random.default_rng(8).normal(size=(30, 22, 26)).astype(np.float32)

    class Recorded:
        shape, dtype, ndim = data.shape, data.dtype, 3
        keys = []

        def __getitem__(self, key):
            self.keys.append(tuple(k.indices(n)[:2] for k, n in zip(key, self.shape)))
            return data[key]

    source = Recorded()
    chunks = lowpass_stage.input_chunks(data.shape, 30_000)
    assert chunks[1:] == data.shape[1:] and chunks[0] < data.shape[0]
    lazy = da.from_array(source, chunks=chunks, lock=False, asarray=False, meta=np.empty((0, 0, 0), np.float32))
    got = lowpass(lazy, (1.0,) * 3, 4.0, block_bytes=30_000).compute()
    assert np.array_equal(got, lowpass_numpy(data, (1.0,) * 3, 4.0))
    assert all(y == (0, 22) and x == (0, 26) for _, y, x in source.keys) and len(source.keys) > 1
    assert sorted(z for z, _, _ in source.keys) == [(z, min(z + chunks[0], 30)) for z in range(0, 30, chunks[0])]


def test_the_first_stage_transforms_planes_in_groups_with_the_bits_of_one_plane_at_a_time(monkeypatch):
    """Each transform call takes the interpreter lock once, which a thread setting up numba holds
    most of the time: planes go in groups of about FORWARD_BYTES of spectrum, with the same bits
    as plane by plane (odd rows, so lines of one group straddle planes in pocketfft's vector lanes)."""
    import scipy.fft

    data = np.random.default_rng(11).normal(size=(13, 7, 19)).astype(np.float32)
    plane_bytes = 7 * (19 // 2 + 1) * 8
    monkeypatch.setattr(lowpass_stage, "FORWARD_BYTES", 4 * plane_bytes + 1)
    calls = []
    rfft = scipy.fft.rfft
    monkeypatch.setattr(scipy.fft, "rfft", lambda x, *a, **k: calls.append(x.shape) or rfft(x, *a, **k))
    got = lowpass_stage._forward_x(data, 6)
    assert calls == [(4, 7, 19)] * 3 + [(1, 7, 19)]
    one_by_one = np.stack([rfft(plane, axis=1, workers=1)[:, :6] for plane in data])
    assert got.dtype == np.complex64 and got.tobytes() == one_by_one.tobytes()
