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
