"""errors.py: one family of errors, each with the exit code the command line gives it."""

import pytest

from occupy_dask import errors


@pytest.mark.parametrize(
    "kind, code",
    [
        (errors.SettingsError, 2),
        (errors.UsageError, 2),
        (errors.ClusterUsageError, 2),
        (errors.MapError, 1),
        (errors.OutputError, 1),
        (errors.ClusterError, 1),
        (errors.ProcessingError, 1),
        (errors.SolventModelError, 1),
    ],
)
def test_every_error_is_an_occupy_error_with_its_exit_code(kind, code):
    assert issubclass(kind, errors.OccupyError) and kind.exit_code == code


def test_the_modules_raise_the_family_s_classes():
    from occupy_dask import cluster, settings, solvent
    from occupy_dask.io import read

    assert settings.SettingsError is errors.SettingsError and read.MapError is errors.MapError
    assert cluster.ClusterError is errors.ClusterError and solvent.SolventModelError is errors.SolventModelError
    with pytest.raises(errors.SettingsError):
        settings.derive_settings((8, 8, 8), -1.0)
    with pytest.raises(errors.ClusterUsageError):
        cluster.ClusterSpec.from_options(mode="nowhere")
