"""buffers.py: freed memory is kept for reuse."""

import pytest


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_reuses_large_arrays_instead_of_unmapping_them():
    import subprocess
    import sys

    script = """
import sys, numpy as np, psutil
from occupy_dask.buffers import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); sys.exit()
rss = lambda: psutil.Process().memory_info().rss
a = np.ones(32 << 20, np.float32)  # 128 MB, above every mmap threshold by default
before = rss()
del a
print(before - rss() > 64e6)  # freed back to the system
"""

    def freed(mode):
        return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout.strip()

    result = {mode: freed(mode) for mode in ("keep", "default")}
    if result["keep"] == "unsupported":
        pytest.skip("not glibc")
    assert result == {"keep": "False", "default": "True"}  # kept in the process only when asked


def test_write_behind_writes_in_order_bounds_what_waits_and_raises_errors_at_drain():
    """The background writer runs every queued write, gives each write's buffers back to the
    pool once written, lets at most ``depth`` writes wait (a further submit blocks until one is
    done) and raises the first failed write's error at ``drain``, after waiting for the rest."""
    import threading
    import time

    from occupy_dask.buffers import POOL, WriteBehind

    POOL.clear()
    writes = WriteBehind(depth=1)
    release = threading.Event()
    done = []
    buffer = POOL.take((4, 4))
    writes.submit(lambda: (release.wait(5), done.append(1)), [buffer])
    started = time.perf_counter()
    threading.Timer(0.3, release.set).start()
    writes.submit(lambda: done.append(2))  # waits for the first write's slot
    assert time.perf_counter() - started > 0.25
    writes.drain()
    assert done == [1, 2] and POOL.take((4, 4)) is buffer

    def failing():
        raise OSError(28, "No space left on device")

    writes.submit(failing)
    time.sleep(0.2)  # the failed write has run
    with pytest.raises(OSError, match="No space"):  # the next chunk stops at once
        writes.submit(lambda: done.append(3))
    with pytest.raises(OSError, match="No space"):
        writes.drain()
    assert done == [1, 2]
    writes.close()


def test_a_task_of_a_failed_run_never_reaches_the_next_runs_writer():
    """Each run has its own writer, found by key; once a run closed it (after a failure too), a
    task still running from that run finds none and writes itself, so its error cannot land in
    the next run's writer."""
    from occupy_dask.buffers import close_writer, open_writer, writer

    first = open_writer()
    writer(first).submit(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    close_writer(first, raise_errors=False)  # the failed run's writer, drained quietly
    assert writer(first) is None and writer(None) is None
    second = open_writer()
    done = []
    writer(second).submit(lambda: done.append(1))
    close_writer(second)  # the next run: no error of the first
    assert done == [1] and writer(second) is None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="Linux /proc")
def test_a_whole_map_array_has_its_own_mapping_without_huge_page_advice():
    import numpy as np

    from occupy_dask.buffers import map_empty

    array = map_empty((16, 256, 256))  # 4 MB: numpy would advise huge pages for it
    array[...] = 2.0
    assert array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
    address, end = array.ctypes.data, array.ctypes.data + array.nbytes
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    heads = [i for i, line in enumerate(lines) if "-" in line.split()[0] and ":" not in line.split()[0]]
    overlapping = []  # every mapping the array touches (numpy's advice covers only the aligned middle of its array)
    for i, j in zip(heads, [*heads[1:], len(lines)]):
        lo, hi = (int(a, 16) for a in lines[i].split()[0].split("-"))
        if lo < end and address < hi:
            overlapping.append((lo, hi, next(line for line in lines[i:j] if line.startswith("VmFlags:")).split()[1:]))
    assert len(overlapping) == 1, "the array's mapping is not one mapping of its own"
    lo, hi, flags = overlapping[0]
    assert lo <= address and end <= hi  # the whole array inside it
    assert "hg" not in flags  # no MADV_HUGEPAGE
    assert float(array.sum()) == 2.0 * array.size
    assert map_empty((0, 3, 4)).shape == (0, 3, 4)


def test_linear_algebra_threads_default_to_one_and_user_settings_stay():
    from occupy_dask.buffers import SINGLE_THREADED_LIBRARIES, single_threaded_libraries

    environ = {"OMP_NUM_THREADS": "4", "PATH": "/bin"}
    set_here = single_threaded_libraries(environ)
    assert environ["OMP_NUM_THREADS"] == "4"  # the user's choice
    assert set_here == [n for n in SINGLE_THREADED_LIBRARIES if n != "OMP_NUM_THREADS"]
    assert all(environ[n] == "1" for n in set_here)
    assert single_threaded_libraries(environ) == []


def test_the_command_line_sets_them_before_numpy_loads_its_libraries():
    import subprocess
    import sys

    script = (
        "import os, sys; sys.argv = ['occupy-dask', '--version']\n"
        "from occupy_dask.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('numpy' in sys.modules, os.environ.get('OPENBLAS_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out[-3:] == ["False", "1", "1"]


def test_numpy_is_asked_for_no_huge_pages_unless_the_user_says():
    from occupy_dask.buffers import without_huge_page_advice

    environ = {"PATH": "/bin"}
    assert without_huge_page_advice(environ) and environ["NUMPY_MADVISE_HUGEPAGE"] == "0"
    environ = {"NUMPY_MADVISE_HUGEPAGE": "1"}
    assert not without_huge_page_advice(environ) and environ["NUMPY_MADVISE_HUGEPAGE"] == "1"


def test_a_command_line_run_gives_numpy_no_huge_page_advice_and_dask_array_no_copied_docstrings(golden_dir, tmp_path):
    import subprocess
    import sys

    script = (
        "from occupy_dask.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "import dask.array, numpy\n"
        "print(numpy._core.multiarray._set_madvise_hugepage(True), 'copied from numpy' in (dask.array.sum.__doc__ or ''))"
    )
    args = ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), "--amplify", "--quiet"]
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout.split()
    assert out[-2:] == ["False", "False"]  # numpy's advice was off for the run; dask.array's docstrings are its own
    assert (tmp_path / "out_phantom64.mrc").exists()
    # the same in a process that imported dask.array first: nothing to skip, nothing changed
    script = "import dask.array\n" + script
    out = subprocess.run([sys.executable, "-c", script, *args, "--overwrite"], capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert out.stdout.split()[-1] == "True"


def test_the_docstring_helper_leaves_a_dask_without_it_alone(monkeypatch):
    import sys

    import dask.utils

    from occupy_dask import cli

    monkeypatch.delitem(sys.modules, "dask.array", raising=False)
    monkeypatch.delattr(dask.utils, "_derived_from")
    cli._without_dask_docstrings()
    assert not hasattr(dask.utils, "_derived_from")


def test_the_command_freezes_what_its_imports_and_its_run_leave_for_the_garbage_collector(golden_dir, tmp_path):
    import subprocess
    import sys

    script = (
        "import gc\nfrom occupy_dask.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(gc.get_freeze_count(), gc.isenabled(), len(gc.get_objects()))"
    )
    args = ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), "--amplify", "--quiet"]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    frozen, enabled, left = int(out[-3]), out[-2], int(out[-1])
    assert frozen > 20_000  # dask, numba and scipy's modules: no pass of the collector walks them
    assert enabled == "True"  # the run's own cycles are collected while it runs
    assert left < 1_000  # and what it leaves is frozen too, for the interpreter's last collection at exit
    assert (tmp_path / "out_phantom64.mrc").exists()


# --------------------------------------------------------------------------- warm memory


def _mapping_of(array):
    """The buffer a map_empty array views (numpy's frombuffer keeps it as a memoryview's object)."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return getattr(array, "obj", array)


def test_a_warmed_map_reservation_goes_to_the_first_map_of_its_size_and_only_to_it():
    from occupy_dask import buffers

    shape = (8, 64, 128)
    nbytes = 4 * 8 * 64 * 128
    buffers.warm_memory(map_bytes=nbytes).join()
    reserved = buffers._reserved[nbytes][0]
    other = buffers.map_empty((4, 64, 128))  # another size: a mapping of its own, the reservation stays
    assert _mapping_of(other) is not reserved and nbytes in buffers._reserved
    array = buffers.map_empty(shape)
    assert _mapping_of(array) is reserved and array.shape == shape and not array.any()  # written with zeros
    array[...] = 3.0
    assert _mapping_of(buffers.map_empty(shape)) is not reserved  # taken once
    assert not buffers.release_reserved_map()
    buffers.warm_memory(map_bytes=nbytes).join()
    assert buffers.release_reserved_map() and not buffers._reserved


def test_a_map_from_a_reservation_waits_until_the_warming_zeros_are_written(monkeypatch):
    """The warming thread writes zeros over the reserved mapping; a task that wrote its block
    into the map before they landed would lose it. map_empty hands the mapping out only once
    the thread is done with it."""
    import ctypes
    import time

    from occupy_dask import buffers

    real_memset = ctypes.memset

    def slow_memset(address, value, count):
        time.sleep(0.4)
        return real_memset(address, value, count)

    monkeypatch.setattr(buffers.ctypes, "memset", slow_memset)
    started = time.perf_counter()
    thread = buffers.warm_memory(map_bytes=4 * 4 * 32 * 32)
    array = buffers.map_empty((4, 32, 32))
    assert time.perf_counter() - started > 0.35
    array[...] = 7.0
    thread.join()
    assert (array == 7.0).all()


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc settings")
def test_warmed_heap_pages_are_reused_by_the_next_arrays_without_faults():
    import os
    import subprocess
    import sys

    script = """
import resource, sys, numpy as np
from occupy_dask.buffers import keep_freed_memory, warm_memory
if not keep_freed_memory():
    print("unsupported"); sys.exit()
if sys.argv[1] == "warm":
    warm_memory(heap_bytes=160 << 20).join()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.empty(32 << 20, np.float32)  # 128 MB
a.fill(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}  # 4 KB pages: one fault each

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, env=env).stdout.strip()
        if out == "unsupported":
            pytest.skip("not glibc")
        return int(out)

    cold, warm = faults("cold"), faults("warm")
    if cold < 16_000:
        pytest.skip(f"{cold} faults for 128 MB: the system gives huge pages anyway")
    assert warm < cold / 10


def test_an_estimate_drops_a_reservation_that_its_low_pass_does_not_take(phantom64):
    import occupy_dask
    from occupy_dask import buffers

    buffers.warm_memory(map_bytes=4 * 32**3)  # not this map's size (a --max-box preview's, say)
    with occupy_dask.estimate(phantom64, voxel_size=1.0):
        assert not buffers._reserved  # dropped once the low-pass is done
    nbytes = phantom64.nbytes
    buffers.warm_memory(map_bytes=nbytes).join()
    reserved = buffers._reserved[nbytes][0]
    with occupy_dask.estimate(phantom64, voxel_size=1.0) as est:
        assert _mapping_of(est.sources["lp"].array) is reserved and not buffers._reserved  # the low-passed map is in it
    buffers.warm_memory(map_bytes=nbytes)
    with occupy_dask.estimate(phantom64, voxel_size=1.0, lowpass=2.0):  # at Nyquist: no low-pass, no map
        assert not buffers._reserved


def test_the_command_line_warms_memory_only_for_a_run_that_keeps_its_map_in_memory(golden_dir, tmp_path, monkeypatch):
    import gzip
    import shutil

    from occupy_dask import buffers, cli

    calls = []
    monkeypatch.setattr(buffers, "warm_memory", lambda map_bytes=0, heap_bytes=0: calls.append((map_bytes, heap_bytes)))
    phantom = golden_dir / "phantom64.mrc"
    cli._warm_memory(phantom, None, local=True, threads=2)
    cli._warm_memory(phantom, None, local=True, threads=1)  # one thread's blocks: less heap
    assert calls == [(4 * 64**3, int(cli.HEAP_SHARE * 4 * 64**3)), (4 * 64**3, int(cli.HEAP_SHARE / 2 * 4 * 64**3))]
    calls.clear()
    zipped = tmp_path / "phantom64.mrc.gz"
    with open(phantom, "rb") as f, gzip.open(zipped, "wb") as g:
        shutil.copyfileobj(f, g)
    cli._warm_memory(phantom, None, local=False)  # workers, a cluster, a memory limit
    cli._warm_memory(phantom, 48, local=True)  # a --max-box preview works on a smaller map
    cli._warm_memory(zipped, None, local=True)
    cli._warm_memory(tmp_path / "missing.mrc", None, local=True)
    monkeypatch.setattr(buffers, "memory_limit", lambda: cli.WARM_ROOM * 4 * 64**3 + (1 << 30) - 1)  # a tight cgroup
    cli._warm_memory(phantom, None, local=True)
    monkeypatch.setattr(buffers, "memory_limit", lambda: 1 << 40)
    monkeypatch.setattr(buffers, "IN_MEMORY_BYTES", 4 * 64**3 - 1)  # a map the run keeps on disk
    cli._warm_memory(phantom, None, local=True)
    assert calls == []


def test_the_memory_limit_is_the_tightest_memory_cgroup_on_the_process_path(tmp_path):
    from occupy_dask.buffers import memory_limit

    physical = memory_limit(proc_cgroup=str(tmp_path / "missing"))
    assert physical > 0
    proc = tmp_path / "cgroup"
    proc.write_text("12:cpu,cpuacct:/job\n9:memory:/slurm/job_7/step_0\n0::/job\n")
    v1 = tmp_path / "memory"
    (v1 / "slurm/job_7/step_0").mkdir(parents=True)
    unlimited = str(2**63 - 4096)  # what v1 writes for no limit
    (v1 / "memory.limit_in_bytes").write_text(unlimited)
    (v1 / "slurm/memory.limit_in_bytes").write_text(unlimited)
    (v1 / "slurm/job_7/memory.limit_in_bytes").write_text("2147483648\n")  # the job's limit, above the step
    (v1 / "slurm/job_7/step_0/memory.limit_in_bytes").write_text(unlimited)
    assert memory_limit(str(proc), str(tmp_path)) == min(physical, 2 << 30)
    (tmp_path / "job").mkdir()
    (tmp_path / "job/memory.max").write_text("max\n")
    assert memory_limit(str(proc), str(tmp_path)) == min(physical, 2 << 30)
    (tmp_path / "job/memory.max").write_text("1073741824\n")  # a v2 limit, tighter
    assert memory_limit(str(proc), str(tmp_path)) == min(physical, 1 << 30)
    proc.write_text("0::/\n")  # a process at the root of a v2 tree without memory.max files
    assert memory_limit(str(proc), str(tmp_path / "empty")) == physical


def test_a_command_line_run_puts_its_low_passed_map_in_the_warmed_reservation(golden_dir, tmp_path):
    import subprocess
    import sys

    script = (
        "from occupy_dask import buffers\n"
        "taken, take = [], buffers._take_reserved\n"
        "buffers._take_reserved = lambda n: taken.append(take(n)) or taken[-1]\n"
        "from occupy_dask.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sum(m is not None for m in taken), len(buffers._reserved))"
    )
    args = ["-i", str(golden_dir / "phantom64.mrc"), "-d", str(tmp_path), "--amplify", "--quiet"]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out[-2:] == ["1", "0"]
    assert (tmp_path / "out_phantom64.mrc").exists()
