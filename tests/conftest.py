"""Shared fixtures: test data folders, the golden phantoms, and the command line as a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def phantom(golden_dir) -> Path:
    """The 96^3 golden phantom (1.1 Å voxels, three domains at occupancy 1.0, 0.8 and 0.5)."""
    return golden_dir / "phantom96.mrc"


def _run_cli(*args, cwd, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "occupy_dask", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=environment
    )


@pytest.fixture(scope="session")
def cli():
    """Run ``python -m occupy_dask ARGS`` in ``cwd``: ``cli(*args, cwd=folder, env={...})`` -> CompletedProcess
    (``env`` adds to this process's environment)."""
    return _run_cli


@pytest.fixture(scope="session")
def phantom96(golden_dir) -> np.ndarray:
    """The 96^3 golden phantom as a float32 array."""
    return mrcfile.read(golden_dir / "phantom96.mrc").astype(np.float32)


@pytest.fixture(scope="session")
def phantom64(golden_dir) -> np.ndarray:
    """The 64^3 golden phantom as a float32 array."""
    return mrcfile.read(golden_dir / "phantom64.mrc").astype(np.float32)


def _outputs_of(data, **options):
    import occupy_dask

    with occupy_dask.estimate(data, voxel_size=1.1, **options) as est:
        return est.s_max, est.scale.compute(), est.confidence_map.compute(), est


@pytest.fixture(scope="session")
def outputs_of():
    """``outputs_of(map, **options)`` -> (s_max, scale, confidence, closed Estimate) of a map with 1.1 Å voxels."""
    return _outputs_of


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def unavailable():
    """``unavailable(reason)``: skip a test that needs what this machine lacks (root, cgroups,
    namespaces), with the reason; in CI (``CI`` set) fail instead, since CI must run it."""
    return _unavailable
