"""Bounded memory, proven: a map larger than the memory it is given completes, with the same
outputs as an unconstrained run, inside a memory cgroup (v1 or v2) of about half the map's size
plus the interpreter. Needs root; skipped with the reason elsewhere, required in CI."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mrcfile
import numpy as np
import pytest

pytestmark = pytest.mark.slow

MIB = 1 << 20
V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


class MemoryGroup:
    """A memory cgroup made for the test (v1 or v2), swap included in the limit."""

    def __init__(self):
        name = f"occupy_dask_test_{uuid.uuid4().hex[:8]}"
        if (V1 / "memory.limit_in_bytes").exists():
            self.version, self.path = 1, V1 / name
        elif "memory" in (V2 / "cgroup.controllers").read_text().split():
            self.version, self.path = 2, V2 / name
            if "memory" not in (V2 / "cgroup.subtree_control").read_text().split():
                (V2 / "cgroup.subtree_control").write_text("+memory")
        else:
            raise OSError("no memory controller")
        self.path.mkdir()

    def limit(self, nbytes: int) -> None:
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(nbytes))
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(nbytes))
        else:
            (self.path / "memory.max").write_text(str(nbytes))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")

    def peak(self) -> int:
        return int((self.path / ("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")).read_text())

    def oom_kills(self) -> int:
        text = (self.path / ("memory.oom_control" if self.version == 1 else "memory.events")).read_text()
        return int(dict(line.split() for line in text.splitlines()).get("oom_kill", 0))

    def run(self, args, cwd) -> subprocess.CompletedProcess:
        """Run ``python -m occupy_dask ARGS`` as a member of this group."""
        script = f'echo $$ > "{self.path}/cgroup.procs" && exec "$0" -m occupy_dask "$@"'
        return subprocess.run(["sh", "-c", script, sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900)

    def remove(self) -> None:
        self.path.rmdir()


@pytest.fixture
def memory_group(unavailable):
    reason = None
    if os.geteuid() != 0:
        reason = "memory cgroups need root"
    else:
        try:
            group = MemoryGroup()
        except OSError as exc:
            reason = f"cannot create a memory cgroup here ({exc})"
    if reason is not None:
        unavailable(reason)
    yield group
    group.remove()


def test_a_map_larger_than_its_memory_completes_with_the_same_outputs(tmp_path, golden_dir, memory_group):
    data = np.tile(mrcfile.read(golden_dir / "phantom96.mrc"), (4, 4, 4))  # 384^3, 216 MiB
    path = tmp_path / "big.mrc"
    mrcfile.write(path, data, voxel_size=1.1)
    del data
    flags = ["--amplify", "--chunks", "64", "-q"]
    free = subprocess.run(
        [sys.executable, "-m", "occupy_dask", "-i", path, "-d", tmp_path / "free", *flags], capture_output=True, text=True, timeout=900
    )
    assert free.returncode == 0, free.stderr

    tiny = memory_group.run(["-i", golden_dir / "phantom96.mrc", "-d", tmp_path / "tiny", *flags], cwd=tmp_path)
    assert tiny.returncode == 0, tiny.stderr
    interpreter = memory_group.peak()  # what a run of a small map holds: interpreter, libraries, buffers
    limit = path.stat().st_size // 2 + interpreter
    memory_group.limit(limit)
    bound = memory_group.run(["-i", path, "-d", tmp_path / "bound", "--memory-limit", str(limit), *flags], cwd=tmp_path)
    assert bound.returncode == 0, bound.stderr
    assert memory_group.oom_kills() == 0
    assert limit < path.stat().st_size + interpreter - 64 * MIB  # a real constraint: the map alone would not fit beside the interpreter
    for name in ("scale_occ_big.mrc", "conf_big.mrc", "out_big.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "free" / name), mrcfile.read(tmp_path / "bound" / name)), name
    # automatic chunks: slabs fitted to the limit, the spectra spilled and the low-passed map read from the filtered one
    slabs = memory_group.run(["-i", path, "-d", tmp_path / "slabs", "--memory-limit", str(limit), "--amplify", "-q"], cwd=tmp_path)
    assert slabs.returncode == 0, slabs.stderr
    assert memory_group.oom_kills() == 0
    for name in ("scale_occ_big.mrc", "conf_big.mrc", "out_big.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "free" / name), mrcfile.read(tmp_path / "slabs" / name)), name


def test_a_process_in_a_memory_cgroup_sees_its_limit_and_the_command_warms_nothing_there(tmp_path, golden_dir, memory_group):
    """A SLURM job or a container limits memory with a cgroup: a run inside a tight one does not
    fault in memory early (it would push the input out of the page cache)."""
    memory_group.limit(768 * MIB)
    script = (
        f'echo $$ > "{memory_group.path}/cgroup.procs" && exec "$0" -c '
        '"from occupy_dask import buffers, cli; calls = []; buffers.warm_memory = lambda *a: calls.append(a); '
        "cli._warm_memory(__import__('pathlib').Path('" + str(golden_dir / "phantom64.mrc") + "'), None, True); "
        'print(buffers.memory_limit(), len(calls))"'
    )
    out = subprocess.run(["sh", "-c", script, sys.executable], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(768 * MIB), "0"]
