"""occupy_dask: local map scale (OccuPy method) of cryo-EM maps, chunked with dask."""

__version__ = "0.1.0"

from .api import estimate, modify, write  # noqa: E402
from .settings import Settings, derive_settings  # noqa: E402

__all__ = ["Settings", "__version__", "derive_settings", "estimate", "modify", "write"]
