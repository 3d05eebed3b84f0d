"""Every error occupy_dask reports to its user, each with the exit code of the command line.

Each message is one line that says what is wrong and what to do; the CLI prints it (with a
traceback under ``--verbose``) and exits with ``exit_code``. Usage errors (a flag, a setting,
an option that does not fit) exit 2; anything found while running exits 1.
"""

from __future__ import annotations


class OccupyError(Exception):
    """Base of occupy_dask's errors."""

    exit_code = 1
    prefix_source = False  # the CLI names the input map before the message


class SettingsError(OccupyError, ValueError):
    """A setting the method cannot use (a usage error)."""

    exit_code = 2
    prefix_source = True


class MapError(OccupyError, ValueError):
    """An input map or mask that cannot be read as a 3D volume on the map's grid."""


class OutputError(OccupyError, RuntimeError):
    """An output that cannot or must not be written."""


class ClusterError(OccupyError, RuntimeError):
    """A scheduler, cluster or cluster configuration that cannot be used."""


class ProcessingError(OccupyError, RuntimeError):
    """The method cannot go on with this map; the message says why in one line."""

    prefix_source = True


class SolventModelError(ProcessingError):
    """The solvent model cannot be fitted to this map (solvent-flattened, masked or pure noise)."""


class ClusterUsageError(ClusterError):
    """Cluster flags that do not fit together (a usage error)."""

    exit_code = 2


class UsageError(OccupyError):
    """Command-line flags that do not fit together."""

    exit_code = 2
