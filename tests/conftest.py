from pathlib import Path

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
