"""Temporary copies of lazy maps: in memory, or spilled to uncompressed zarr stores on disk.

The low-passed map is computed once and read by every pass; the Fourier stage's spectra of a
large map, and arrays handed to the API, are spilled too. Every store is written block by block
(each block covering whole store chunks, see :mod:`occupy_dask.io.zarr_chunks`) and read back by
block reads or as a lazy dask array; the folders are removed when the run ends.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from .blocks import region
from .buffers import IN_MEMORY_BYTES, STASH, background_writer, map_empty, memory_limit, writer
from .io.read import ArraySource, ZarrSource
from .io.zarr_chunks import copy_rows, create_plain_array, plain_layout, read_plain_block, will_need_block
from .lowpass import inverse_x

BUDGET_SHARE = 8  # under a memory limit, a map or spectrum above this share of it goes to disk


def lowpass_on_disk(nbytes: int, options, run) -> bool:
    """Whether the low-passed map (``nbytes``) is kept on disk: as ``options.spill_lowpass``
    says, else by :func:`keeps_on_disk`."""
    return options.spill_lowpass if options.spill_lowpass is not None else keeps_on_disk(nbytes, run)


def keeps_on_disk(nbytes: int, run) -> bool:
    """Whether a map of ``nbytes`` that tasks read goes to disk: when large (see
    :func:`too_large_for_memory`) or when workers in other processes must read it."""
    return too_large_for_memory(nbytes, run) or getattr(run, "distributed", False)


def keeps_in_page_cache(nbytes: int, run) -> bool:
    """Whether a spilled store that every pass reads (the filtered spectrum of
    :class:`LowpassOnRead`) stays in the page cache once read: when this process's threads read
    it and it is at most a BUDGET_SHARE-th of the memory the process may use (the machine's, a
    cgroup's, which counts the page cache too; and the run's memory limit). Otherwise each read
    drops what it read, and every pass reads the store from disk again."""
    if getattr(run, "distributed", False):
        return False
    budget = getattr(run, "memory_budget", None)
    limit = memory_limit() if budget is None else min(memory_limit(), budget)
    return nbytes <= limit // BUDGET_SHARE


def too_large_for_memory(nbytes: int, run) -> bool:
    """Whether ``nbytes`` exceed IN_MEMORY_BYTES or a share of the run's memory limit."""
    budget = getattr(run, "memory_budget", None)
    return nbytes > IN_MEMORY_BYTES or (budget is not None and nbytes > budget // BUDGET_SHARE)


def scratch_bytes(settings, options, run) -> int:
    """Bytes of temporary stores a run on ``settings`` writes at most: the two spilled spectra
    of a large map, and the low-passed map when it is spilled and not read from the filtered
    spectrum (see :func:`reads_lowpass_from_spectrum`)."""
    from .lowpass import spectrum_bytes

    if not settings.lowpass_applied:
        return 0
    map_bytes = 4 * math.prod(settings.shape)
    spilled = lowpass_on_disk(map_bytes, options, run)
    spectrum = spectrum_bytes(settings.shape, settings.voxel_size, settings.lowpass_angstrom, settings.reference_compatible)
    spectra = too_large_for_memory(spectrum, run)
    stored = spilled and not reads_lowpass_from_spectrum(settings, spilled, spectra)
    return (map_bytes if stored else 0) + (2 * spectrum if spectra else 0)


def reads_lowpass_from_spectrum(settings, lowpass_on_disk: bool, spectra_on_disk: bool) -> bool:
    """Whether the low-passed map is read from its filtered spectrum (:class:`LowpassOnRead`)
    instead of being stored: when it would go to disk, its spectra are on disk already and the
    blocks read are slabs of whole planes."""
    return lowpass_on_disk and spectra_on_disk and settings.slabs


def scratch_folder(temp_dir: str | None, prefix: str = "occupy_dask_") -> Path:
    """A new temporary folder under ``temp_dir`` (default: the system's)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=temp_dir)).absolute()


# Removals running in the background, by path. Freeing a store's blocks is not free: on the
# machine measured (ext4, mounted with discard) it took 0.2-0.3 s per GB, on the main thread
# while every core waited.
_REMOVALS: dict[Path, threading.Thread] = {}
_REMOVALS_LOCK = threading.Lock()


def remove_in_background(path: Path) -> None:
    """Start removing ``path``, a temporary folder nothing reads any more, in a thread of its
    own while the run goes on; :func:`remove_folder` of it, or of a folder above it, waits for
    that removal to end. (Not a daemon: the interpreter waits for it before it exits.)"""
    path = Path(path)
    thread = threading.Thread(target=remove_tree, args=(path,), name=f"occupy-remove-{path.name}")
    with _REMOVALS_LOCK:
        _REMOVALS[path] = thread
    thread.start()


def remove_folder(path: Path) -> None:
    """Remove the temporary folder ``path``, once the removals started inside it (or of it) by
    :func:`remove_in_background` have ended: both remove the same files, and a removal still
    running could leave a folder this one found not yet empty."""
    path = Path(path)
    finish_removals(lambda p: p == path or path in p.parents)
    remove_tree(path)


REMOVAL_THREADS = 4


def remove_tree(path: Path, threads: int = REMOVAL_THREADS) -> None:
    """``shutil.rmtree(path, ignore_errors=True)``, its files unlinked by ``threads`` threads
    at once. An unlink waits on the disk, not the processor (here a discard of the freed blocks,
    on a network filesystem a round trip to its metadata server): a spilled spectrum of 1.1 GB
    in 1227 chunk files took 0.33-0.35 s with four threads, 0.46-0.50 s with one (system time
    0.13-0.16 s either way). At 1024^3 the last spectrum's removal is the end of the run."""
    files, folders = [], []
    for root, _, names in os.walk(path, topdown=False):  # a folder's files and folders before the folder
        files.extend(os.path.join(root, name) for name in names)
        folders.append(root)

    def unlink(part: list[str]) -> None:
        for name in part:
            try:
                os.unlink(name)
            except OSError:
                pass

    workers = [threading.Thread(target=unlink, args=(files[i::threads],)) for i in range(1, min(threads, len(files)))]
    for worker in workers:
        worker.start()
    unlink(files[::threads] if workers else files)
    for worker in workers:
        worker.join()
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)  # what is left: links to folders, files that came since


def finish_removals(which=lambda path: True) -> None:
    """Wait for the background removals (of the paths ``which`` accepts) to end."""
    with _REMOVALS_LOCK:
        running = [(p, t) for p, t in _REMOVALS.items() if which(p)]
    for p, thread in running:
        thread.join()
        with _REMOVALS_LOCK:
            _REMOVALS.pop(p, None)


def store_blocks(array: da.Array, target, run, label: str, measure=None) -> list:
    """Compute ``array`` block by block into ``target`` (a numpy array or a store target whose
    chunks the blocks cover); returns ``measure(block, shape, start)`` of every block, from the
    same tasks (None without ``measure``). A store on disk filled by this process's threads is
    written by a background writer while the tasks go on computing."""
    starts = [np.cumsum((0, *c[:-1])) for c in array.chunks]
    blocks = array.to_delayed(optimize_graph=False)
    with background_writer(not isinstance(target, np.ndarray) and not getattr(run, "distributed", False)) as key:
        tasks = [
            dask.delayed(_store_block, pure=False)(
                blocks[i, j, k], target, array.shape, (int(starts[0][i]), int(starts[1][j]), int(starts[2][k])), measure, (os.getpid(), key)
            )
            for i, j, k in np.ndindex(*blocks.shape)
        ]
        return list(run(*tasks, label=label))


def _store_block(block: np.ndarray, target, shape, start, measure, write_behind=(None, None)):
    measured = None if measure is None else measure(block, shape, start)
    key = region(start, tuple(a + n for a, n in zip(start, block.shape)))
    behind = writer(write_behind[1]) if write_behind[0] == os.getpid() else None
    if behind is None:
        target[key] = block
    else:  # the block is this task's own result: the writer holds it until written
        behind.submit(lambda: target.__setitem__(key, block))
    return measured


def spill(array: da.Array, path: Path, chunks, run, label: str, measure=None):
    """Compute ``array`` into a new plain zarr store at ``path`` chunked ``chunks`` (every block
    of ``array`` covers whole store chunks); returns the per-block ``measure`` results."""
    target = create_plain_array(str(path), array.shape, chunks, array.dtype)
    return store_blocks(array, target, run, label, measure)


def materialise(array: da.Array, to_disk: bool, temp_dir: str | None, run, label: str, read_chunks=None, measure=None):
    """Compute a lazy float32 map into memory or, ``to_disk``, into a temporary store; returns
    the source, the temporary folder (or None) and the per-block ``measure`` results.

    The store is chunked as the array's z-slabs cut along y and x like ``read_chunks`` (the
    later block reads), so a block read touches hardly more than its own data."""
    if not to_disk:
        target = map_empty(array.shape)
        return ArraySource(target), None, store_blocks(array, target, run, label, measure)
    folder = scratch_folder(temp_dir)
    chunks = [c[0] for c in array.chunks]
    if read_chunks is not None:
        for axis in (1, 2):
            if len(array.chunks[axis]) == 1:  # blocks span the axis: any cut along it stays aligned
                chunks[axis] = min(read_chunks[axis], array.shape[axis])
    try:
        measured = spill(array, folder / "map.zarr", chunks, run, label, measure)
    except BaseException:  # an error or an interrupt while writing: the caller never learns of the folder
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ZarrSource(str(folder / "map.zarr"), tuple(array.shape), scratch=True), folder, measured


class Spiller:
    """``spill(array, chunks, name, read_chunks)`` for the low-pass: computes an intermediate
    spectrum into a store ``<name>.zarr`` in ``folder`` chunked ``chunks`` and returns a lazy
    array reading it back in blocks of ``read_chunks`` (the next stage's blocks, each read
    straight from the chunk files it covers: under a memory limit the store has thousands of
    small chunks, too many to read one task and one zarr call each). ``stores`` holds the
    stores written, by name."""

    def __init__(self, folder: Path, run) -> None:
        self.folder, self.run = folder, run
        self.stores: dict[str, PlainStore] = {}

    def __call__(self, array: da.Array, chunks, name: str, read_chunks=None) -> da.Array:
        path = self.folder / f"{name}.zarr"
        spill(array, path, chunks, self.run, f"low-pass ({name})")
        store = self.stores[name] = PlainStore(str(path), tuple(array.shape), array.dtype.str)
        meta = np.empty((0, 0, 0), dtype=array.dtype)
        return da.from_array(store, chunks=read_chunks or chunks, lock=False, asarray=False, meta=meta)


@dataclass(frozen=True)
class PlainStore:
    """A plain zarr store of ours (a spilled spectrum) read straight from its chunk files, which
    are dropped from the page cache once read (it is read once), the next block's read ahead."""

    path: str
    shape: tuple[int, int, int]
    dtype_str: str

    ndim = 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dtype_str)

    def __getitem__(self, key) -> np.ndarray:
        key = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
        out = np.empty([k.stop - k.start for k in key], dtype=self.dtype)
        return read_plain_block(self.path, plain_layout(self.path), self.shape, key, out, drop=True, ahead=True)


def array_source(data, temp_dir: str | None, run, distributed: bool = False):
    """A source for an in-memory or lazy array and its temporary folder (or None): large dask
    arrays, and any array that workers in other processes must read, are spilled to disk."""
    if distributed and not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data, dtype=np.float32), chunks=(64, -1, -1))
    if not isinstance(data, da.Array):
        return ArraySource(np.ascontiguousarray(data, dtype=np.float32)), None
    if data.nbytes <= IN_MEMORY_BYTES and not distributed:
        return ArraySource(np.ascontiguousarray(data.compute(), dtype=np.float32)), None
    folder = scratch_folder(temp_dir, "occupy_dask_input_")
    chunks = tuple(max(c) for c in data.chunks)  # regular blocks, each covering one store chunk
    try:
        spill(data.astype(np.float32).rechunk(chunks), folder / "input.zarr", chunks, run, "input")
    except BaseException:  # the caller never learns of the folder
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ZarrSource(str(folder / "input.zarr"), tuple(data.shape)), folder


# A read of the low-passed map from its filtered spectrum takes from disk up to GROUP_BYTES of
# spectrum at a time and transforms up to LINES_BYTES of padded half spectrum at a time, each at
# most an eighth of the block it reads: with the transform's output, under half a block (inside
# the allowance of occupy_dask.cluster.TASK_BLOCKS).
GROUP_BYTES = 16 << 20
LINES_BYTES = 8 << 20


@dataclass(frozen=True)
class LowpassOnRead:
    """The low-passed map of a run whose spectra are spilled, read from its filtered half
    spectrum (``path``: ``(nz, ny, columns)`` complex64, the ``kx`` the low-pass keeps, z and y
    already transformed back): a read takes the planes' and rows' spectrum lines from disk and
    does the low-pass's last step on them, the inverse real FFT along x
    (:func:`occupy_dask.lowpass.inverse_x`). The same bits as the low-passed map itself, which
    is then never written: an 8 Å low-pass of 1 Å voxels keeps a quarter of the x frequencies,
    so each pass reads a quarter of the bytes. Blocks of whole lines (slabs) only: a block
    narrower than the map along x transforms its whole lines. ``cached``: what is read stays in
    the page cache for the next passes (see :func:`keeps_in_page_cache`), else it is dropped."""

    path: str
    shape: tuple[int, int, int]  # the map's
    columns: int
    cached: bool = False

    ndim = 3
    dtype = np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        key = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
        return self.read_into(key, np.empty([k.stop - k.start for k in key], dtype=np.float32))

    def read_into(self, key: tuple[slice, slice, slice], out: np.ndarray, keep_from: int | None = None) -> np.ndarray:
        """Read the block ``key`` into ``out`` (``keep_from``: see :func:`occupy_dask.io.read.read_block`;
        unless ``cached``, the rest of what is read is dropped from the page cache; the planes from
        ``keep_from`` on are also handed to the next slab's read, transformed: see :class:`PlaneStash`)."""
        (z0, z1), (y0, y1), columns = (k.indices(n)[:2] for k, n in zip(key, self.shape))
        window = (self.path, y0, y1, *columns)
        done = STASH.take_into(window, z0, out)  # planes the slab before transformed for this one
        if z0 + done < z1:
            self._transform(z0 + done, z1, y0, y1, columns, out[done:], keep_from)
        if keep_from is not None and keep_from < z1:
            STASH.put(window, max(keep_from, z0), out[max(keep_from, z0) - z0 :])
        return out

    def _transform(self, z0, z1, y0, y1, columns, out, keep_from) -> None:
        """Read the spectrum lines of planes ``z0:z1``, rows ``y0:y1`` and transform them into ``out``."""
        rows, half = y1 - y0, self.shape[2] // 2 + 1
        layout = plain_layout(self.path)
        spectrum_shape = (*self.shape[:2], self.columns)
        group = max(1, min(z1 - z0, min(GROUP_BYTES, out.nbytes // 8) // (rows * self.columns * 8)))
        step = max(1, min(group, min(LINES_BYTES, out.nbytes // 8) // (rows * half * 8)))
        whole = (slice(z0, z1), slice(y0, y1), slice(None))  # read a group of planes at a time, the disk already on the rest and the next block
        will_need_block(self.path, layout, spectrum_shape, whole, ahead=True)
        read = np.empty((group, rows, self.columns), dtype=np.complex64)
        lines = np.zeros((step, rows, half), dtype=np.complex64)  # the columns past the kept ones stay 0
        for z in range(z0, z1, group):
            n = min(group, z1 - z)
            planes = (slice(z, z + n), slice(y0, y1), slice(None))
            read_plain_block(self.path, layout, spectrum_shape, planes, read[:n], drop=not self.cached, keep_from=keep_from, announced=True)
            for first in range(0, n, step):
                m = min(step, n - first)
                copy_rows(lines[:m, :, : self.columns], read[first : first + m])
                inverse_x(lines[:m], self.shape, out=out[z - z0 + first : z - z0 + first + m], columns=columns)
