"""occupy_dask: local map scale (OccuPy method) of cryo-EM maps, chunked with dask.

The public names are imported when first used, so that ``import occupy_dask.cli`` (and
``occupy-dask --help``) does not pay for dask, numba and scipy up front.
"""

from .version import __version__

_PUBLIC = {
    "estimate": ".api",
    "modify": ".api",
    "write": ".api",
    "run_map": ".api",
    "Settings": ".settings",
    "derive_settings": ".settings",
}

__all__ = ["Settings", "__version__", "derive_settings", "estimate", "modify", "run_map", "write"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
