"""Reusable float32 block buffers for the per-chunk tasks.

A fresh 64 MB array costs a page fault per 4 KB page on first touch (about 0.2-0.35 s per 64 MB
on the machines measured), more than the arithmetic on it. Chunk tasks of one run need the same
few block shapes again and again, so they borrow buffers here and give them back when their
results are written; the pool keeps them mapped for the next task in this process.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np


class BufferPool:
    """Free lists of float32 arrays by shape, shared by the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}

    def take(self, shape) -> np.ndarray:
        """A C-contiguous float32 array of ``shape`` with arbitrary contents."""
        shape = tuple(int(n) for n in shape)
        with self._lock:
            free = self._free.get(shape)
            if free:
                return free.pop()
        return np.empty(shape, dtype=np.float32)

    def give(self, array: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault(array.shape, []).append(array)

    @contextmanager
    def borrow(self):
        """Collect buffers with ``take`` inside the block; all are given back at its end."""
        taken: list[np.ndarray] = []

        def take(shape):
            taken.append(self.take(shape))
            return taken[-1]

        try:
            yield take
        finally:
            for array in taken:
                self.give(array)

    def clear(self) -> None:
        """Drop every free buffer (the memory goes back to the system)."""
        with self._lock:
            self._free.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for arrays in self._free.values() for a in arrays)


POOL = BufferPool()


def release_buffers() -> int:
    """Free this process's pooled buffers; returns how many bytes they held."""
    held = POOL.nbytes
    POOL.clear()
    return held
