"""reductions.py: the global reductions; exact median, one- and two-pass histograms, s_max, solvent region."""

import mrcfile
import numpy as np
import pytest

import occupy_dask


def test_full_scale_reference_is_the_largest_tile_quantile(phantom96, outputs_of):
    s_max, _, _, est = outputs_of(phantom96, chunks=40, tile_size=12)
    t = 12
    idx = int(np.floor(est.settings.tau * t**3))
    z, y, x = (int(c - t / 2) for c in est.best_tile_centre)
    tile = np.sort(phantom96[z : z + t, y : y + t, x : x + t].ravel())
    assert tile[idx] == np.float32(s_max)


def test_solvent_definition_either_polarity(golden_dir, phantom96):
    soldef = mrcfile.read(golden_dir / "soldef96.mrc").astype(np.float32)
    with occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=soldef) as a:
        with occupy_dask.estimate(phantom96, voxel_size=1.1, solvent_def=1.0 - soldef) as b:
            assert a.solvent_region != b.solvent_region  # the other side of the mask was chosen
            assert a.solvent_model.mu == pytest.approx(b.solvent_model.mu, abs=1e-6)
            assert a.solvent_model.sigma == pytest.approx(b.solvent_model.sigma, rel=1e-4)


@pytest.mark.parametrize(("shape", "tile_size", "chunks", "grid"), [((90, 80, 70), 7, (32, 25, 70), None), ((60, 60, 60), 9, (7, 60, 60), 12)])
def test_each_block_owns_the_tiles_whose_origin_it_holds_in_id_order(shape, tile_size, chunks, grid):
    from occupy_dask.blocks import block_grid
    from occupy_dask.kernels.tiles import tile_layout
    from occupy_dask.reductions import tiles_of_blocks

    origins, _ = tile_layout(shape, tile_size, grid)
    blocks = list(block_grid(shape, chunks))
    owned = tiles_of_blocks(blocks, origins, chunks)
    assert sorted(owned) == sorted(index for index, _, _ in blocks)
    for index, start, stop in blocks:
        inside = np.all((origins >= start) & (origins < stop), axis=1)
        assert owned[index].dtype == np.int64
        assert owned[index].tolist() == np.flatnonzero(inside).tolist()  # increasing ids; none in two blocks
    assert sum(len(ids) for ids in owned.values()) == len(origins)


@pytest.mark.parametrize("shape", [(20, 21, 22), (21, 21, 21)])
def test_finite_median_is_exact(shape):
    from occupy_dask.estimation import default_run
    from occupy_dask.io.read import ArraySource
    from occupy_dask.reductions import finite_median

    data = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    data[data > 2.5] = np.nan
    data.flat[::997] = np.inf
    finite = data[np.isfinite(data)]
    median, bad = finite_median(ArraySource(data), shape, (8, 9, 10), default_run)
    assert bad == data.size - finite.size
    assert median == pytest.approx(float(np.median(finite)), rel=1e-6, abs=1e-7)


def test_one_pass_and_two_pass_reductions_agree(phantom96, monkeypatch, outputs_of):
    from occupy_dask import reductions

    one = outputs_of(phantom96, chunks=32)
    monkeypatch.setattr(reductions, "_known_histogram_ranges", lambda sources, ranges: None)  # ranges unknown: histograms in a second pass
    two = outputs_of(phantom96, chunks=32)
    assert one[0] == two[0]
    assert np.array_equal(one[1], two[1]) and np.array_equal(one[2], two[2])
    assert np.array_equal(one[3].confidence.fraction, two[3].confidence.fraction)
    assert (one[3].solvent_model.mu, one[3].solvent_model.sigma) == (two[3].solvent_model.mu, two[3].solvent_model.sigma)
