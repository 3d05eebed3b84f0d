"""Raw chunk-file access to the plain zarr v3 arrays occupy_dask makes for scratch data.

The spilled low-passed map is read back once per pass and every block read hits a few chunk
files; going through zarr there costs a decode copy per chunk and leaves the data in the page
cache. For an uncompressed little-endian array with default chunk keys the chunk file is the
chunk's bytes in C order, so a block is read (and written) here with positioned reads straight
into its buffer, and dropped from the page cache afterwards. Every other array goes through
zarr. The tests check both directions against zarr's own reads and writes.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WRITE_BATCH = 64  # chunk files a block write holds open at once (their write-back started together)
GATHER_BYTES = 16 << 20  # a block write copies the strips of a row of chunks out at most this many bytes at a time


def drop_cached(fd: int, start: int = 0, length: int = 0) -> None:
    """Drop a range of a file (default: all of it) from the page cache. Fresh page-cache pages
    cost more than disk reads, above all on virtual machines, so scratch stores and written
    outputs are not left to crowd it. A filesystem or platform without it: left to the kernel."""
    _advise(fd, start, length, "POSIX_FADV_DONTNEED")


def will_need(fd: int, start: int, length: int) -> None:
    """Ask the kernel to start reading a range of a file now. Reads of many ranges apart (a
    block of rows from every plane, a block across chunk files) otherwise go to the disk one at
    a time, each waiting for the last; announced together they are queued at once (on a cold
    network or virtual disk, 20x faster). A hint: ignored where not supported."""
    _advise(fd, start, length, "POSIX_FADV_WILLNEED")


def _advise(fd: int, start: int, length: int, advice: str) -> None:
    try:
        os.posix_fadvise(fd, start, length, getattr(os, advice))
    except (OSError, AttributeError):
        pass


def release_written(fd: int, start: int, length: int) -> None:
    """Flush a written range to disk and drop it from the page cache: the next blocks reuse
    those pages instead of claiming new memory, so writing maps larger than memory keeps the
    page cache (and, on virtual machines, first-touch costs of fresh pages) small."""
    try:
        os.fdatasync(fd)
    except (OSError, AttributeError):  # a filesystem or platform without it: leave it to the kernel
        return
    drop_cached(fd, start, length)


@dataclass(frozen=True)
class PlainLayout:
    """Where a plain zarr v3 array keeps its chunks."""

    chunks: tuple[int, int, int]
    separator: str
    fill: complex
    dtype: np.dtype  # little-endian

    def chunk_path(self, path: str, index) -> str:
        if self.separator == "/":
            return os.path.join(path, "c", *map(str, index))
        return os.path.join(path, "c" + self.separator + self.separator.join(map(str, index)))


@functools.lru_cache(maxsize=64)
def plain_layout(path: str) -> PlainLayout | None:
    """The layout of a 3D zarr v3 array of float32 or complex64 stored as plain little-endian
    chunks (no compression, no sharding, regular grid, default keys), else None."""
    try:
        meta = json.loads(Path(path, "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    plain = (
        meta.get("zarr_format") == 3
        and meta.get("data_type") in ("float32", "complex64")
        and meta.get("codecs") == [{"name": "bytes", "configuration": {"endian": "little"}}]
        and meta.get("chunk_grid", {}).get("name") == "regular"
        and meta.get("chunk_key_encoding", {}).get("name") == "default"
        and not meta.get("storage_transformers")
        and len(meta.get("shape", ())) == 3
    )
    if not plain:
        return None
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    fill = meta.get("fill_value", 0.0)
    fill = complex(*fill) if isinstance(fill, list) else dtype.type(fill).item()
    separator = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
    chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
    return PlainLayout(chunks, separator, fill, dtype)


def _will_need_file(file_path: str, start: int, length: int) -> None:
    try:
        fd = os.open(file_path, os.O_RDONLY)
    except OSError:  # a chunk never written: nothing to read
        return
    try:
        will_need(fd, start, length)
    finally:
        os.close(fd)


def copy_rows(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src``, each row (the last axis, contiguous in both) copied as one item:
    numpy copies short rows (a chunk's few columns) element by element, at half the speed."""
    if dst.dtype != src.dtype or dst.shape != src.shape or dst.strides[-1] != dst.itemsize or src.strides[-1] != src.itemsize:
        dst[...] = src
        return
    row = np.dtype((np.void, src.shape[-1] * src.itemsize))
    dst.view(row)[...] = src.view(row)


def following_block(key, shape) -> tuple[slice, slice, slice] | None:
    """The block after ``key`` in block order (a pass's tasks run so): as large, one step on along
    the last axis that ``key`` does not span; None at that axis's end or for a whole array."""
    bounds = [k.indices(n)[:2] for k, n in zip(key, shape)]
    for axis in (2, 1, 0):
        (a, b), n = bounds[axis], shape[axis]
        if b - a < n:
            if b >= n:
                return None
            return tuple(slice(b, min(n, 2 * b - a)) if i == axis else slice(*bounds[i]) for i in range(3))
    return None


def will_need_block(path: str, layout: PlainLayout, shape, key, ahead: bool = False) -> None:
    """Ask the kernel to start reading the planes of every chunk file the block ``key`` of the
    plain array at ``path`` covers (see :func:`will_need`); with ``ahead`` those of the block
    after it too (:func:`following_block`)."""
    chunk, itemsize = layout.chunks, layout.dtype.itemsize
    plane = chunk[1] * chunk[2]
    after = following_block(key, shape) if ahead else None
    for block in (key,) if after is None else (key, after):
        bounds = [k.indices(n)[:2] for k, n in zip(block, shape)]
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(bounds, chunk)]
        for i in ranges[0]:
            z_lo, z_hi = max(bounds[0][0], i * chunk[0]), min(bounds[0][1], (i + 1) * chunk[0])
            for j in ranges[1]:
                for k in ranges[2]:
                    _will_need_file(layout.chunk_path(path, (i, j, k)), itemsize * (z_lo - i * chunk[0]) * plane, itemsize * (z_hi - z_lo) * plane)


def read_plain_block(
    path: str,
    layout: PlainLayout,
    shape,
    key,
    out: np.ndarray,
    drop: bool = False,
    keep_from: int | None = None,
    ahead: bool = False,
    announced: bool = False,
) -> np.ndarray:
    """Read the block ``key`` of the plain array at ``path`` into ``out``, chunk file by chunk
    file (whole planes of a chunk in one positioned read); with ``drop`` each chunk file read is
    dropped from the page cache, all of it, or with ``keep_from`` only the planes read below
    that plane (a pass over slabs: the planes from there on are read again by the next slab).
    With ``ahead`` the disk also starts on the block after it (:func:`following_block`) while
    this one is used: a pass's next read then finds its data in memory. ``announced``: the caller
    has already asked for the block (:func:`will_need_block`), as a read in parts does once."""
    chunk = layout.chunks
    itemsize = layout.dtype.itemsize
    bounds = [k.indices(n)[:2] for k, n in zip(key, shape)]
    ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(bounds, chunk)]
    plane = chunk[1] * chunk[2]
    indices = [(i, j, k) for i in ranges[0] for j in ranges[1] for k in ranges[2]]
    if drop and not announced and (len(indices) > 1 or ahead):  # read from disk: every chunk file's planes asked for at once, queued together
        will_need_block(path, layout, shape, key, ahead)
    for index in indices:
        lo = [max(a, i * c) for (a, _), i, c in zip(bounds, index, chunk)]
        hi = [min(b, (i + 1) * c) for (_, b), i, c in zip(bounds, index, chunk)]
        dst = out[tuple(slice(a - o[0], b - o[0]) for a, b, o in zip(lo, hi, bounds))]
        chunk_path = layout.chunk_path(path, index)
        try:
            fd = os.open(chunk_path, os.O_RDONLY)
        except FileNotFoundError:
            dst[...] = layout.fill  # a chunk never written holds the fill value
            continue
        try:
            z_in = lo[0] - index[0] * chunk[0]
            whole = all(a == i * c and b - a == c for a, b, i, c in zip(lo[1:], hi[1:], index[1:], chunk[1:]))
            if whole and dst.flags.c_contiguous and dst.dtype == layout.dtype:  # whole planes of the chunk: one read into place
                view = memoryview(dst.reshape(-1)).cast("B")
                got = os.preadv(fd, [view], itemsize * z_in * plane)
            else:  # only the planes needed (a chunk's planes are contiguous), then the rows and columns of them
                data = np.empty((hi[0] - lo[0], *chunk[1:]), dtype=layout.dtype)
                view = memoryview(data.reshape(-1)).cast("B")
                got = os.preadv(fd, [view], itemsize * z_in * plane)
                copy_rows(dst, data[(slice(None), *(slice(a - i * c, b - i * c) for a, b, i, c in zip(lo[1:], hi[1:], index[1:], chunk[1:])))])
            if got != view.nbytes:
                raise OSError(f"{chunk_path}: zarr chunk file is shorter than its chunk")
            if drop and keep_from is None:  # re-reading from disk is cheaper than growing the page cache by a map-sized store
                drop_cached(fd)
            elif drop and lo[0] < keep_from:
                drop_cached(fd, itemsize * z_in * plane, itemsize * (min(hi[0], keep_from) - lo[0]) * plane)
        finally:
            os.close(fd)
    return out


PLAIN_DTYPES = {np.dtype("float32"): ("float32", 0.0), np.dtype("complex64"): ("complex64", [0.0, 0.0])}


def plain_array_metadata(shape, chunks, dtype) -> dict:
    """The ``zarr.json`` zarr 3 writes for an uncompressed array of ``dtype`` (float32 or
    complex64) with fill value 0, regular chunks and default keys (the tests compare it with
    zarr's own, byte for byte)."""
    name, fill = PLAIN_DTYPES[np.dtype(dtype)]
    return {
        "shape": [int(n) for n in shape],
        "data_type": name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(c) for c in chunks]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def create_plain_array(path: str, shape, chunks, dtype) -> PlainTarget:
    """Create an uncompressed zarr v3 array and return a target writing into it. float32 and
    complex64 (the scratch stores) get their metadata written here: importing zarr and its
    array creation cost about 0.35 s on the main thread while every core waits; other dtypes go
    through zarr."""
    if np.dtype(dtype) in PLAIN_DTYPES:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "zarr.json"), "x", encoding="utf-8") as f:  # an existing array is not replaced (as zarr)
            f.write(json.dumps(plain_array_metadata(shape, chunks, dtype), indent=2))
    else:
        import zarr

        zarr.create_array(path, shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype), fill_value=0, compressors=None)
    return PlainTarget(path, tuple(shape), tuple(chunks), np.dtype(dtype).str).prepare()


@dataclass(frozen=True)
class PlainTarget:
    """Picklable write target (``target[key] = block``) of a plain zarr v3 array: a block covering
    exactly one chunk is written straight to that chunk's file, flushed and dropped from the page
    cache; other blocks go through zarr."""

    path: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    dtype: str = "<f4"

    def prepare(self) -> PlainTarget:
        """Make the chunk folders ``c/i/j`` before any write."""
        counts = [-(-n // c) for n, c in zip(self.shape, self.chunks)]
        for i in range(counts[0]):
            for j in range(counts[1]):
                os.makedirs(os.path.join(self.path, "c", str(i), str(j)), exist_ok=True)
        return self

    def __setitem__(self, key, value) -> None:
        """Write a block: one whose edges lie on chunk boundaries (or the array's end) goes
        straight to the chunk files it covers, each flushed and dropped from the page cache;
        any other block goes through zarr."""
        bounds = [k.indices(n)[:2] for k, n in zip(key, self.shape)]
        aligned = all(a % c == 0 and (b % c == 0 or b == n) for (a, b), c, n in zip(bounds, self.chunks, self.shape))
        if not aligned:
            import zarr

            zarr.open_array(self.path, mode="r+")[key] = value
            return
        value = np.asarray(value)
        ranges = [range(a // c, -(-b // c)) for (a, b), c in zip(bounds, self.chunks)]
        indices = [(i, j, k) for i in ranges[0] for j in ranges[1] for k in ranges[2]]
        parts = self._parts(value, bounds, indices)
        for _ in range(0, len(indices), WRITE_BATCH):
            written = []
            try:
                for index, part in itertools.islice(parts, WRITE_BATCH):
                    written.append(self._write_chunk(index, part))
                if len(written) > 1:  # start every file's write-back before waiting for any of them
                    for fd, nbytes in written:
                        drop_cached(fd, 0, nbytes)
                for fd, nbytes in written:
                    release_written(fd, 0, nbytes)
            finally:
                for fd, _ in written:
                    os.close(fd)

    def _parts(self, value: np.ndarray, bounds, indices):
        """``(index, data)`` of each chunk in ``indices`` (in order, the last axis fastest): its
        part of the block ``value``; where the chunks cut the block's rows into strips, the
        strips of a row of chunks are copied out together (:func:`gather_strips`), at most
        GATHER_BYTES at a time."""
        c = self.chunks
        strips = len(indices) > 1 and c[2] < bounds[2][1] - bounds[2][0] and value.dtype == np.dtype(self.dtype)
        if not strips:
            for index in indices:
                yield index, value[_part(index, c, bounds)]
            return
        from ..kernels.layout import gather_strips

        per_copy = max(1, GATHER_BYTES // (math.prod(c) * value.itemsize))
        for (i, j), row in itertools.groupby(indices, key=lambda index: index[:2]):
            row = list(row)
            rows = value[_part((i, j), c, bounds)]
            for first in range(0, len(row), per_copy):
                group = row[first : first + per_copy]
                copied = gather_strips(rows, group[0][2] * c[2] - bounds[2][0], len(group), c)
                yield from zip(group, copied)

    def _write_chunk(self, index, value: np.ndarray) -> tuple[int, int]:
        """Write one chunk's file; returns its open descriptor and the bytes written."""
        block = np.ascontiguousarray(value, dtype=self.dtype)
        if block.shape != tuple(self.chunks):  # an edge chunk: zarr stores it at the full chunk shape
            full = np.zeros(self.chunks, dtype=self.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        # the folders exist (prepare()); never made here, so a store removed meanwhile stays removed
        fd = os.open(os.path.join(self.path, "c", *map(str, index)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, memoryview(block.reshape(-1)).cast("B"), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd, block.nbytes


def _part(index, chunks, bounds) -> tuple[slice, ...]:
    """The slices of a block spanning ``bounds`` (``(start, stop)`` per axis) that chunk
    ``index`` covers, along the leading ``len(index)`` axes."""
    return tuple(slice(i * n - a, min((i + 1) * n, b) - a) for i, n, (a, b) in zip(index, chunks, bounds))
