"""blocks.py: the chunk grid covers the map once; moments of parts add up to the whole's."""

import numpy as np
import pytest

from occupy_dask.blocks import Moments, block_grid, region


@pytest.mark.parametrize("chunks", [(4, 5, 6), (7, 7, 7), (20, 1, 3)])
def test_the_block_grid_covers_every_voxel_once(chunks):
    shape = (13, 11, 17)
    seen = np.zeros(shape, np.int64)
    for _, start, stop in block_grid(shape, chunks):
        seen[region(start, stop)] += 1
    assert np.all(seen == 1)


def test_moments_of_parts_add_up_to_the_whole():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=1000).astype(np.float32)
    parts = sum((Moments.of(p) for p in np.array_split(values, 7)), Moments())
    whole = values.astype(np.float64)
    assert parts.n == 1000 and (parts.lo, parts.hi) == (whole.min(), whole.max())
    assert parts.mean == pytest.approx(whole.mean(), rel=1e-12)
    assert parts.variance == pytest.approx(whole.var(), rel=1e-9)
    lo, hi, mean, rms = parts.header_statistics()
    assert (lo, hi) == (whole.min(), whole.max()) and rms == pytest.approx(whole.std(), rel=1e-9)
    assert Moments.of(values[:0]) == Moments() and Moments.of(values[:1]).variance == np.inf


def test_block_tasks_run_in_block_order_on_the_local_scheduler():
    import dask

    from occupy_dask.blocks import block_tasks

    started = []
    grid = list(block_grid((40, 9, 9), (4, 9, 9)))
    tasks = block_tasks("t", ((started.append, (start[0],)) for _, start, _ in grid))
    dask.compute(*tasks, scheduler="threads", num_workers=1)
    assert started == [start[0] for _, start, _ in grid] == list(range(0, 40, 4))


def test_the_fused_pass_that_writes_the_outputs_runs_its_chunks_in_block_order(phantom64, monkeypatch):
    """Neighbouring slabs one after the other: what a read leaves in the page cache serves the
    next one, and the outputs are written in file order."""
    import dask

    import occupy_dask
    from occupy_dask import fused

    started = []
    chunk_task = fused.chunk_task
    monkeypatch.setattr(fused, "chunk_task", lambda plan, sources, start, *args: started.append(start) or chunk_task(plan, sources, start, *args))
    with occupy_dask.estimate(phantom64, voxel_size=1.1, chunks=16) as est:
        stats = fused.store_outputs(est.plan, est.sources, {})
        dask.compute(stats, scheduler="threads", num_workers=1)
    assert len(started) == 64 and started == sorted(started)
