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
