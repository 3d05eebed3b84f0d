"""Blocks of a map: the chunk grid, reading blocks from sources, and running moments.

Every per-block task of the passes reads its own data from a source (a file, a scratch store or
an in-memory array) through these functions, so results do not depend on the chunking.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass

import dask
import numpy as np

from .io.read import ArraySource, next_slab_start, read_block
from .kernels.local import moments


def block_grid(shape, chunks):
    """``(index, start, stop)`` of every chunk of ``shape``, in C order."""
    axes = [list(range(0, n, c)) for n, c in zip(shape, chunks)]
    for index in itertools.product(*[range(len(a)) for a in axes]):
        start = tuple(axes[d][index[d]] for d in range(3))
        stop = tuple(min(s + c, n) for s, c, n in zip(start, chunks, shape))
        yield index, start, stop


def ordered_keys(name: str, count: int) -> list[str]:
    """Keys for ``count`` block tasks, in block order, under which dask's local scheduler runs
    them in that order: it runs independent tasks in descending order of their keys, and would
    otherwise pick blocks all over the map. Neighbouring slabs then run one after the other, so
    the planes one read leaves in the page cache for the next (``keep_from``) are read before
    they are dropped, and files are read and written in order."""
    token = uuid.uuid4().hex
    return [f"{name}-{token}-{count - 1 - i:06d}" for i in range(count)]


def block_tasks(name: str, calls) -> list:
    """Lazy ``function(*args)`` for each ``(function, args)`` of ``calls`` (one per block, in
    block order), under :func:`ordered_keys`."""
    calls = list(calls)
    keys = ordered_keys(name, len(calls))
    return [dask.delayed(function, pure=False)(*args, dask_key_name=key) for (function, args), key in zip(calls, keys)]


def region(start, stop) -> tuple[slice, slice, slice]:
    """The slices of the block ``[start, stop)``."""
    return tuple(slice(a, b) for a, b in zip(start, stop))


def block_of(source, key, take, keep_from: int | None = None) -> np.ndarray:
    """A block of a source: a view of an in-memory map, else read into a buffer from ``take``
    (``keep_from``: see :func:`occupy_dask.io.read.read_block`)."""
    if isinstance(source, ArraySource):
        return source.array[key]
    return read_block(source, key, take(tuple(r.stop - r.start for r in key)), keep_from=keep_from)


def read_blocks(sources, start, stop, reach, names, take):
    """The scale data from ``start`` to ``reach`` (read once, with the planes, rows and columns
    its tiles reach beyond the block; None: not needed) and the blocks ``[start, stop)`` of the
    sources ``names``, each source read at most once."""
    extended, seen = None, []
    if reach is not None:
        extended = block_of(sources["scale"], region(start, reach), take, keep_from=next_slab_start(start, stop, sources["scale"].shape))
        seen.append((sources["scale"], extended[tuple(slice(0, b - a) for a, b in zip(start, stop))]))
    blocks = []
    for name in names:
        block = next((b for source, b in seen if source is sources[name]), None)
        if block is None:
            block = block_of(sources[name], region(start, stop), take)
            seen.append((sources[name], block))
        blocks.append(block)
    return extended, blocks


def tile_reach(stop, tile_origins, tile_size):
    """The far corner of a block extended to hold every tile whose origin lies in it."""
    if len(tile_origins) == 0:
        return tuple(stop)
    return tuple(int(v) for v in np.maximum(np.asarray(stop), tile_origins.max(axis=0) + tile_size))


@dataclass(frozen=True)
class Moments:
    """Count, sum, sum of squares, min and max of a set of voxels; moments of two sets add."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        if values.size == 0:
            return cls()
        total, squares, lo, hi = moments(np.ascontiguousarray(values).ravel())
        return cls(int(values.size), total, squares, lo, hi)

    @classmethod
    def from_row(cls, n: int, row: np.ndarray) -> Moments:
        """From a ``(sum, sum of squares, min, max)`` row of :func:`kernels.sweep.block_moments`."""
        return cls(n, float(row[0]), float(row[1]), float(row[2]), float(row[3])) if n else cls()

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.total + other.total,
            self.squares + other.squares,
            min(self.lo, other.lo),
            max(self.hi, other.hi),
        )

    @property
    def mean(self) -> float:
        return self.total / self.n

    @property
    def variance(self) -> float:
        """Population variance (infinite with fewer than two voxels)."""
        if self.n < 2:
            return np.inf
        mean = self.total / self.n
        return max(self.squares / self.n - mean * mean, 0.0)

    def header_statistics(self) -> tuple[float, float, float, float]:
        """(min, max, mean, rms deviation from the mean): the statistics an MRC header holds."""
        mean = self.total / self.n
        return self.lo, self.hi, mean, math.sqrt(max(self.squares / self.n - mean * mean, 0.0))
