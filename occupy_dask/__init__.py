"""occupy_dask: local map scale (OccuPy method) of cryo-EM maps, chunked with dask."""

from .api import estimate, modify, run_map, write
from .settings import Settings, derive_settings
from .version import __version__

__all__ = ["Settings", "__version__", "derive_settings", "estimate", "modify", "run_map", "write"]
