"""occupy-dask --cluster slurm on a real SLURM (scripts/slurm/start.sh starts a one-node one on
127.0.0.1). Skipped when no SLURM answers, unless OCCUPY_DASK_SLURM=required (as in CI)."""

import os
import re
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest

pytestmark = pytest.mark.slurm


def _slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"idle|mixed|allocated", states))


@pytest.fixture(scope="module")
def slurm():
    if not _slurm_up():
        if os.environ.get("OCCUPY_DASK_SLURM") == "required":
            pytest.fail("no SLURM answers (run scripts/slurm/start.sh)")
        pytest.skip("no SLURM here (scripts/slurm/start.sh starts one)")


def test_slurm_run_on_two_worker_jobs_equals_the_local_run(slurm, tmp_path, data_dir, cli):
    logs = tmp_path / "logs"
    config = tmp_path / "slurm.yaml"
    config.write_text(
        "jobqueue:\n"
        "  slurm:\n"
        "    cores: 1\n"
        "    processes: 1\n"
        "    memory: 2GB\n"
        "    walltime: '00:15:00'\n"
        "    interface: lo\n"
        "    death-timeout: 60\n"
        f"    local-directory: {tmp_path / 'scratch'}\n"
        f"    log-directory: {logs}\n"
    )
    common = ("-i", data_dir / "emd_1832.map", "--amplify", "--chunks", "32", "--save-all-maps")
    local = cli(*common, "-d", "local", "-q", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    run = cli(*common, "-d", "slurm", "--cluster", "slurm", "--cluster-config", config, "--jobs", "2", "--scheduler-timeout", "120", cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    # the work ran in two SLURM jobs, whose worker logs say so
    log = (tmp_path / "slurm" / "log_emd_1832.txt").read_text()
    assert "dask scheduler tls://" in log and "(TLS)" in log  # credentials made for the run
    jobs = re.search(r"in SLURM job\(s\) ([\d, ]+)", log)
    assert jobs, log
    ids = [j.strip() for j in jobs.group(1).split(",")]
    assert len(ids) == 2
    for job in ids:
        worker_logs = list(logs.glob(f"*{job}*"))
        assert worker_logs and any("Start worker at" in p.read_text() for p in worker_logs), job

    written = sorted(p.name for p in (tmp_path / "local").glob("*.mrc"))
    assert len(written) == 5  # scale, confidence, amplified, low-passed, factor
    assert written == sorted(p.name for p in (tmp_path / "slurm").glob("*.mrc"))
    for name in written:
        assert np.array_equal(mrcfile.read(tmp_path / "local" / name), mrcfile.read(tmp_path / "slurm" / name)), name
    assert not [p for p in (tmp_path / "slurm").iterdir() if p.name.startswith(".")]  # temporaries and credentials removed
    assert any("tls://" in p.read_text() for p in logs.glob("*"))  # the workers joined over TLS
    assert not list(tmp_path.glob(".occupy_dask_tls_*"))  # their credentials' private folder is gone
