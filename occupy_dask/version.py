"""The package's version: the one place it is set (pyproject.toml reads it from here).

A literal, not the installed metadata: ``importlib.metadata`` takes 20-40 ms to import, paid by
every run and by ``--version``."""

__version__ = "0.1.0"
