"""Reusable float32 block buffers for the per-chunk tasks.

A fresh 64 MB array costs a page fault per 4 KB page on first touch (about 0.2-0.35 s per 64 MB
on the machines measured), more than the arithmetic on it. Chunk tasks of one run need the same
few block shapes again and again, so they borrow buffers here and give them back when their
results are written; the pool keeps them mapped for the next task in this process.

The other large arrays (the low-pass spectra, intermediate blocks) come from numpy's allocator;
:func:`keep_freed_memory` makes glibc keep their memory in the process for the next one.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ALIGNMENT = 4096  # page-aligned buffers: whole-plane slabs can be written with O_DIRECT
IN_MEMORY_BYTES = 512 << 20  # larger low-passed maps and spectra go to disk (a run's memory then follows its chunks, not its map)


def aligned_empty(shape) -> np.ndarray:
    """An uninitialised C-contiguous float32 array starting on an ALIGNMENT boundary."""
    import numpy as np  # here, not at import: the command line loads this module before it parses (--help needs no numpy)

    nbytes = 4 * int(np.prod(shape))
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + nbytes].view(np.float32).reshape(shape)


def map_empty(shape) -> np.ndarray:
    """An uninitialised float32 array for a whole map that tasks fill once (the in-memory
    low-passed map), in its own anonymous mapping, freed with the array: the mapping
    :func:`warm_memory` reserved for it when its size matches, else a new one.

    numpy asks for transparent huge pages for every large array. A virtual machine that reports
    free memory to its host (free page reporting at 2 MB blocks, as on the machines measured)
    hands out huge pages that the host has taken back, and the first touch of each then costs
    a fault on the host too. Filling a fresh 512 MB array, 8 new processes each: numpy's array
    0.13-1.2 s (median 0.9 s), a private mapping of its own 0.25-0.40 s (median 0.28 s). That
    mapping gets no huge-page advice (unless the system's policy is ``always``)."""
    import numpy as np

    shape = tuple(int(n) for n in shape)
    nbytes = 4 * int(np.prod(shape))
    if nbytes == 0:
        return np.empty(shape, dtype=np.float32)
    mapping = _take_reserved(nbytes)
    if mapping is None:
        mapping = mmap.mmap(-1, nbytes, flags=_PRIVATE_ANONYMOUS)
    return np.frombuffer(mapping, dtype=np.float32).reshape(shape)


_PRIVATE_ANONYMOUS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", getattr(mmap, "MAP_ANON", 0))
_reserved: dict[int, tuple[mmap.mmap, threading.Event]] = {}  # by size: a map's mapping for map_empty, and "written"
_reserved_lock = threading.Lock()
_heap_kept = False  # keep_freed_memory() succeeded: memory freed to the heap stays in it


def warm_memory(map_bytes: int = 0, heap_bytes: int = 0) -> threading.Thread | None:
    """Fault in, from a background thread, memory that this run will write anyway: first
    ``heap_bytes`` of the heap (allocated, written and freed, so the run's arrays reuse its
    pages; only when :func:`keep_freed_memory` keeps freed memory), then the mapping of a
    whole-map array of ``map_bytes`` that :func:`map_empty` will be asked for (the in-memory
    low-passed map), reserved now.

    The first write of a fresh page costs a fault, on a virtual machine a fault on its host too:
    ``perf`` put the kernel's ``clear_page`` at 19% of a 512^3 run's samples, taken while both
    cores computed. The command line calls this before it imports the method's modules, which
    hold the interpreter lock for about 0.5 s while the second core is idle; the thread writes
    zeros with ``memset`` through ctypes, which releases the lock. (``madvise(MADV_POPULATE_WRITE)``
    was tried first: it holds the process's memory-map lock for its whole length, and the imports,
    which map libraries, stopped until it was done.) ``map_empty`` waits until the zeros are
    written before it hands the mapping out. A reservation that it does not take (the run kept
    its map on disk after all) is dropped by :func:`release_reserved_map`. Returns the thread
    (None when there is nothing to do)."""
    heap_bytes = heap_bytes if _heap_kept else 0
    reserved = (mmap.mmap(-1, map_bytes, flags=_PRIVATE_ANONYMOUS), threading.Event()) if map_bytes > 0 else None
    if reserved is None and heap_bytes <= 0:
        return None
    if reserved is not None:
        with _reserved_lock:
            _reserved[map_bytes] = reserved
    thread = threading.Thread(target=_fault_in, args=(heap_bytes, reserved), name="occupy-warm-memory", daemon=True)
    thread.start()
    return thread


def _fault_in(heap_bytes: int, reserved: tuple[mmap.mmap, threading.Event] | None) -> None:
    """Write zeros over ``heap_bytes`` of the heap (then freed) and over the reserved mapping
    (this thread's reference keeps it mapped while it runs, even if the reservation is dropped),
    then set its event."""
    try:
        if heap_bytes > 0:
            libc = ctypes.CDLL(None)
            libc.malloc.argtypes, libc.malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
            libc.free.argtypes, libc.free.restype = (ctypes.c_void_p,), None
            address = libc.malloc(heap_bytes)
            if address:
                ctypes.memset(address, 0, heap_bytes)
                libc.free(address)
        if reserved is not None:
            view = (ctypes.c_char * len(reserved[0])).from_buffer(reserved[0])
            ctypes.memset(ctypes.addressof(view), 0, len(reserved[0]))
            del view
    finally:
        if reserved is not None:
            reserved[1].set()


def _take_reserved(nbytes: int) -> mmap.mmap | None:
    """The reserved mapping of ``nbytes`` once its zeros are written (None if there is none)."""
    with _reserved_lock:
        reserved = _reserved.pop(nbytes, None)
    if reserved is None:
        return None
    reserved[1].wait()  # its zeros must not land on what the caller writes
    return reserved[0]


def release_reserved_map() -> bool:
    """Drop a map reservation of :func:`warm_memory` that no array took (its memory goes back
    to the system once the warming thread is done with it); True if there was one."""
    with _reserved_lock:
        held = bool(_reserved)
        _reserved.clear()
    return held


def physical_memory() -> int:
    """Bytes of RAM of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Bytes of memory this process may use: the machine's RAM, or less where a memory cgroup
    (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) on its path, or above it, says so (a
    SLURM job's, a container's). Page cache counts against such a limit too."""
    limit = physical_memory()
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:  # not Linux, or no /proc
        return limit
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # the v2 hierarchy
            root, name = Path(cgroup_root), "memory.max"
        elif "memory" in controllers.split(","):
            root, name = Path(cgroup_root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = root / path.lstrip("/")
        while True:
            try:
                value = (folder / name).read_text().strip()
            except OSError:  # not mounted here, or the process sees only part of the tree
                value = "max"
            if value.isdigit():
                limit = min(limit, int(value))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return limit


class BufferPool:
    """Free lists of float32 arrays by shape, shared by the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[int, ...], list] = {}

    def take(self, shape) -> np.ndarray:
        """A page-aligned C-contiguous float32 array of ``shape`` with arbitrary contents."""
        shape = tuple(int(n) for n in shape)
        with self._lock:
            free = self._free.get(shape)
            if free:
                return free.pop()
        return aligned_empty(shape)

    def give(self, array: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault(array.shape, []).append(array)

    @contextmanager
    def borrow(self):
        """Collect buffers with ``take`` inside the block; all are given back at its end."""
        taken: list = []

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


class PlaneStash:
    """Planes of a low-passed map that one slab's read transformed and the next slab's read
    needs again (its halo, its tiles' reach: the planes from ``keep_from`` on), handed over
    instead of transformed twice (see :class:`occupy_dask.scratch.LowpassOnRead`). Keyed by the
    spectrum's path and the rows and columns read. A pass reads its slabs in order, so a read
    from plane ``z0`` on is the last to ask for planes held from below ``z0``: those are freed
    then, as are an earlier spectrum's, and all of them between passes
    (:func:`release_buffers`). A few slabs' tails at most, each freed once handed over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[tuple, int, np.ndarray]] = []  # (window, first plane, planes)

    def take_into(self, window: tuple, z0: int, out: np.ndarray) -> int:
        """Copy into ``out`` the planes held for ``window`` from plane ``z0`` on; how many."""
        found, kept = None, []
        with self._lock:
            for entry in self._held:
                held_window, first, _ = entry
                if held_window == window and first == z0 and found is None:
                    found = entry
                elif held_window[0] == window[0] and not (held_window == window and first < z0):
                    kept.append(entry)
            self._held = kept
        if found is None:
            return 0
        n = min(len(found[2]), len(out))
        out[:n] = found[2][:n]
        return n

    def put(self, window: tuple, z0: int, planes: np.ndarray) -> None:
        """Hold a copy of ``planes`` (planes ``z0`` on) for the next read of ``window``."""
        held = planes.copy()
        with self._lock:
            self._held.append((window, z0, held))

    def clear(self) -> int:
        """Free every plane held; returns how many bytes they held."""
        with self._lock:
            held = sum(planes.nbytes for _, _, planes in self._held)
            self._held.clear()
        return held


STASH = PlaneStash()


# glibc mallopt() parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory(keep_bytes: int = 1 << 30) -> bool:
    """Make glibc's malloc serve every allocation from one heap and keep freed memory in it
    instead of returning each large array's pages to the system when it is freed.

    By default every array over 32 MB is a fresh mapping: each one pays a page fault per page
    (on virtual machines several times the cost of the arithmetic on it) and, since numpy asks
    for transparent huge pages, a compaction of free memory. Kept memory is reused at no cost,
    and the peak stays set by the chunk size. Meant for a process that runs occupy-dask and
    little else (the command line calls it, with a smaller ``keep_bytes`` under a memory limit);
    False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # one arena (threads created later share it), no mmap'ed chunks, trim only above keep_bytes free
    global _heap_kept
    _heap_kept = all(mallopt(param, value) == 1 for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, int(keep_bytes))))
    return _heap_kept


# Threads of the linear-algebra libraries numpy and scipy load. The method calls them only for
# tiny fits, and OpenBLAS starts a thread per core at import that spins on it (0.2-0.3 s of
# CPU per run, taken from the other core); dask's own worker processes default to 1 too.
SINGLE_THREADED_LIBRARIES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def single_threaded_libraries(environ) -> list[str]:
    """Set each of SINGLE_THREADED_LIBRARIES the user left unset to 1 in ``environ`` (before
    numpy is imported); returns those set."""
    unset = [name for name in SINGLE_THREADED_LIBRARIES if name not in environ]
    for name in unset:
        environ[name] = "1"
    return unset


def without_huge_page_advice(environ) -> bool:
    """Set ``NUMPY_MADVISE_HUGEPAGE=0`` in ``environ`` unless the user set it (before numpy is
    imported); True if set here.

    numpy asks for transparent huge pages for every array of 4 MB or more, and with
    :func:`keep_freed_memory` that advice covers most of the heap. On a virtual machine that
    reports free memory to its host, each fresh huge page then costs a fault on the host too and
    2 MB cleared at once (the kernel's ``clear_page`` took 13% of a 512^3 run's samples, half of
    that with 4 KB pages). 512^3, eight pairs of runs one after the other: system time 1.19 s
    against 2.04 s (median), user time 5.79 s against 5.40 s (more misses of the address cache
    with small pages), wall time 4.54 s against 4.79 s. ``NUMPY_MADVISE_HUGEPAGE=1`` restores
    numpy's default (on a machine whose fresh huge pages are cheap, the smaller user time may
    win)."""
    if "NUMPY_MADVISE_HUGEPAGE" in environ:
        return False
    environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    return True


def release_run_buffers(run) -> None:
    """Free the pooled buffers of a run: its runner's (this process and its workers) or, for a
    plain compute function, this process's."""
    getattr(run, "release_buffers", release_buffers)()


def release_buffers() -> int:
    """Free this process's pooled buffers and stashed planes; returns how many bytes they held."""
    held = POOL.nbytes
    POOL.clear()
    return held + STASH.clear()


class WriteBehind:
    """Writes of finished chunks done by one background thread, while the computing threads go
    on with the next chunks (the disk and the cores then work at the same time).

    ``submit(write, buffers)`` queues ``write()`` and hands ``buffers`` (pool arrays it reads)
    back to the pool once it has run; at most ``depth`` writes wait or run at a time, so a
    thread that computes faster than the disk writes waits for it, and memory stays bounded.
    ``drain()`` waits for every queued write and raises the first error one of them met; after
    a failed write (a full disk) ``submit`` raises that error too, so the run stops at the next
    chunk instead of computing the rest of the map for nothing. Only for tasks that run in the
    process that drains it (a task in another process writes itself)."""

    def __init__(self, depth: int = 1) -> None:
        self._slots = threading.BoundedSemaphore(depth)
        self._lock = threading.Lock()
        self._pending: list = []
        self._executor = None
        self._failed: BaseException | None = None
        self._closed = False

    def submit(self, write, buffers=()) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self._closed:  # a task of a run that is over: it writes itself
            try:
                write()
            finally:
                _give_back(buffers)
            return
        self._slots.acquire()
        with self._lock:
            if self._failed is not None:
                self._slots.release()
                _give_back(buffers)
                raise self._failed
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="occupy-write")
            self._pending.append(self._executor.submit(self._run, write, buffers))

    def _run(self, write, buffers) -> None:
        try:
            write()
        except BaseException as exc:
            with self._lock:
                self._failed = self._failed or exc
            raise
        finally:
            _give_back(buffers)
            self._slots.release()

    def drain(self, raise_errors: bool = True) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        first_error = None
        for future in pending:
            try:
                future.result()
            except BaseException as exc:  # every write is waited for; the first error is raised
                first_error = first_error or exc
        if first_error is not None and raise_errors:
            raise first_error

    def close(self) -> None:
        """Stop the writer's thread (after ``drain``); later writes are done by their callers."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _give_back(buffers) -> None:
    for array in buffers:
        POOL.give(array)


_WRITERS: dict[str, WriteBehind] = {}  # the background writers of the runs going on in this process


def open_writer() -> str:
    """A new background writer for one stage of a run; returns the key its tasks find it by."""
    import uuid

    key = uuid.uuid4().hex
    _WRITERS[key] = WriteBehind()
    return key


def writer(key: str | None) -> WriteBehind | None:
    """The open writer ``key`` of this process (None: none, or that run is over: the task writes
    itself, so a task still running after its run failed never reaches the next run's writer)."""
    return _WRITERS.get(key) if key is not None else None


def close_writer(key: str, raise_errors: bool = True) -> None:
    """Wait for the writes of writer ``key`` (raising the first error unless told not to) and
    close it."""
    try:
        _WRITERS[key].drain(raise_errors)
    finally:
        _WRITERS.pop(key).close()


@contextmanager
def background_writer(wanted: bool = True):
    """A background writer for one stage of a run, as a context: yields its key (None when not
    ``wanted``). On leaving, every queued write is waited for; the first failed one raises,
    unless the stage is already failing (its writes then finish into files about to be
    discarded, and the stage's own error is raised)."""
    key = open_writer() if wanted else None
    try:
        yield key
    except BaseException:
        if key is not None:
            close_writer(key, raise_errors=False)
        raise
    if key is not None:
        close_writer(key)
