"""Where the graph runs: threads, a LocalCluster of processes, an existing scheduler; a worker
killed mid-run; an unreachable scheduler; chunks too large for the workers."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import mrcfile
import numpy as np
import pytest
from distributed import Client, LocalCluster

from occupy_dask.api import run_map
from occupy_dask.cluster import ClusterError, ClusterSpec, Runner, check_task_memory, connect, task_memory
from occupy_dask.settings import RunOptions

pytestmark = pytest.mark.slow  # processes, clusters, many runs

MAPS = ("scale_occ_{}.mrc", "conf_{}.mrc", "out_{}.mrc")


def _run(phantom, out, runner=None):
    return run_map(phantom, RunOptions(output_dir=out), runner=runner, chunks=24, amplify=True)


def _maps(folder, name):
    return {pattern: mrcfile.read(folder / pattern.format(name)) for pattern in MAPS}


def _assert_same(a, b):
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def threaded(tmp_path_factory, phantom):
    """Outputs of the plain threaded run of the 96^3 phantom in 24^3 chunks."""
    out = tmp_path_factory.mktemp("threads")
    _run(phantom, out)
    return _maps(out, "phantom96")


def test_local_cluster_of_processes_matches_threads(tmp_path, phantom, threaded):
    spec = ClusterSpec(workers=2, threads=1)
    with connect(spec, quiet=True) as runner:
        assert runner.distributed
        result = _run(phantom, tmp_path, runner)
    _assert_same(_maps(tmp_path, "phantom96"), threaded)
    log = (tmp_path / "log_phantom96.txt").read_text()
    assert "2 worker(s)" in log and "dask scheduler tls://127.0.0.1:" in log and "(TLS)" in log
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # spilled stores removed
    assert result.estimate.s_max > 0


def test_workers_low_pass_their_blocks_from_the_spilled_spectrum(tmp_path, phantom, threaded, monkeypatch):
    """Slabs of a map whose spectra are spilled, on workers in other processes: each worker
    low-passes the blocks it reads from the filtered spectrum, with the threads' numbers."""
    from occupy_dask import scratch

    monkeypatch.setattr(scratch, "IN_MEMORY_BYTES", 100_000)  # spill the spectra (decided in this process)
    with connect(ClusterSpec(workers=2, threads=1), quiet=True) as runner:
        result = run_map(phantom, RunOptions(output_dir=tmp_path), runner=runner, amplify=True)
    assert isinstance(result.estimate.sources["lp"], scratch.LowpassOnRead)
    _assert_same(_maps(tmp_path, "phantom96"), threaded)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # spilled stores removed


INTRUDER = """
import sys
from distributed import Client, Security
address, how = sys.argv[1], sys.argv[2]
if how == "tcp":
    address = address.replace("tls://", "tcp://")
security = Security.temporary() if how == "other-ca" else None
with Client(address, timeout=3, security=security) as client:
    print("joined", client.submit(sum, [1, 2]).result(timeout=3))
"""


def test_a_client_without_the_run_s_credentials_cannot_join(tmp_path):
    with connect(ClusterSpec(workers=1, threads=1, timeout=5), quiet=True) as runner:
        address = runner.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert runner.client.submit(sum, [1, 2]).result() == 3  # the run's own client works
        for how in ("no credentials", "tcp", "other-ca"):  # another user's process, three ways
            intruder = subprocess.run([sys.executable, "-c", INTRUDER, address, how], capture_output=True, text=True, timeout=120)
            assert intruder.returncode != 0 and "joined" not in intruder.stdout, (how, intruder.stdout)


def test_no_tls_warns_and_logs_plain_tcp(tmp_path, data_dir, cli):
    result = cli("-i", data_dir / "emd_1832.map", "-d", tmp_path, "--workers", "1", "--threads", "1", "--no-tls", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--no-tls: plain TCP" in result.stderr
    assert "(plain TCP, unencrypted)" in (tmp_path / "log_emd_1832.txt").read_text()


def _write_credentials(security, folder):
    """Files of a temporary Security's CA and certificate (the key is in the certificate file)."""
    ca, cert = folder / "ca.pem", folder / "client.pem"
    ca.write_text(security.tls_ca_file)
    cert.write_text(security.tls_client_cert + security.tls_client_key)
    return ca, cert


def test_an_existing_tls_scheduler_with_the_user_s_credentials(tmp_path, data_dir, cli, threaded):
    from distributed import Security

    security = Security.temporary()
    ca, cert = _write_credentials(security, tmp_path)
    key = tmp_path / "client.key"
    key.write_text(security.tls_client_key)
    cert.write_text(security.tls_client_cert)
    with LocalCluster(n_workers=1, threads_per_worker=1, protocol="tls://", security=security, host="127.0.0.1", dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        refused = cli("-i", data_dir / "emd_1832.map", "-d", tmp_path / "a", "--scheduler-address", address, "--scheduler-timeout", "5", cwd=tmp_path)
        assert refused.returncode == 1 and "dask scheduler" in refused.stderr and "Traceback" not in refused.stderr
        args = ("--scheduler-address", address, "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key)
        result = cli("-i", data_dir / "emd_1832.map", "-d", tmp_path / "b", "-q", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        config = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(ca), "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(cert)}
        config["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] = str(key)
        from_config = subprocess.run(  # the same credentials from the user's dask configuration
            [sys.executable, "-m", "occupy_dask", "-i", data_dir / "emd_1832.map", "-d", tmp_path / "c", "-q", "--scheduler-address", address],
            cwd=tmp_path,
            env={**os.environ, **config},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert from_config.returncode == 0, from_config.stderr
        scheduler_file = tmp_path / "scheduler.json"
        scheduler_file.write_text(json.dumps({"address": address}))
        by_file = cli("-i", data_dir / "emd_1832.map", "-d", tmp_path / "d", "-q", "--scheduler-file", scheduler_file, *args[2:], cwd=tmp_path)
        assert by_file.returncode == 0, by_file.stderr
    assert "(TLS)" in (tmp_path / "b" / "log_emd_1832.txt").read_text()
    usage = cli("-i", data_dir / "emd_1832.map", "--workers", "1", "--tls-ca-file", ca, "--tls-cert", cert, cwd=tmp_path)
    assert usage.returncode == 2 and "existing scheduler" in usage.stderr


def _fused_in_memory(dask_scheduler):
    """Fused chunk tasks whose results are held by each worker (run on the scheduler)."""
    held = {}
    for ts in dask_scheduler.tasks.values():
        if "occupy-fused" in str(ts.key) and ts.state == "memory":
            for ws in ts.who_has:
                held[ws.address] = held.get(ws.address, 0) + 1
    return held


class _KillingRunner(Runner):
    """Kills the worker process holding the most finished chunk results while the fused pass is
    still running, once."""

    killed_while_running = None

    def _distributed(self, objs, label):
        if label != "local scale" or self.killed_while_running is not None:
            return super()._distributed(objs, label)
        futures = self.client.compute(list(objs))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = self.client.run_on_scheduler(_fused_in_memory)
            if sum(held.values()) >= 2:
                victim = max(held, key=held.get)
                pid = self.client.run(os.getpid, workers=[victim])[victim]
                self.killed_while_running = not all(f.done() for f in futures)
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        return tuple(self.client.gather(futures))


def test_a_worker_killed_mid_run_changes_nothing(tmp_path, phantom, threaded):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        runner = _KillingRunner(client=client, quiet=True)
        _run(phantom, tmp_path, runner)
    assert runner.killed_while_running is True
    _assert_same(_maps(tmp_path, "phantom96"), threaded)


def test_existing_scheduler_by_address_and_by_file(tmp_path, phantom, threaded):
    scheduler_file = tmp_path / "scheduler.json"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"scheduler_file": str(scheduler_file)},
    ) as cluster:
        for kind, spec in (
            ("address", ClusterSpec(scheduler_address=cluster.scheduler_address)),
            ("file", ClusterSpec(scheduler_file=str(scheduler_file))),
        ):
            out = tmp_path / kind
            with connect(spec, quiet=True) as runner:
                _run(phantom, out, runner)
            _assert_same(_maps(out, "phantom96"), threaded)
            assert f"dask scheduler {cluster.scheduler_address}" in (out / "log_phantom96.txt").read_text()


def test_unreachable_scheduler_fails_within_the_timeout(tmp_path, data_dir, cli):
    start = time.monotonic()
    proc = cli("-i", data_dir / "emd_1832.map", "-d", "out", "--scheduler-address", "tcp://127.0.0.1:1", "--scheduler-timeout", "2", cwd=tmp_path)
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:1 within 2 s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_chunks_too_large_for_the_memory_limit_are_refused_before_running(tmp_path, data_dir, cli):
    # default chunks of the 64^3 map: 4 slabs of 16x64x64 voxels; at 1 MB neither thinner slabs nor cubes fit either
    proc = cli("-i", data_dir / "emd_1832.map", "-d", "out", "--memory-limit", "1MB", "--threads", "2", "--amplify", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "chunks of 16x64x64 voxels need about" in line and "GiB per task" in line and "2 thread(s) each" in line and "--chunks" in line
    assert not (tmp_path / "out").exists()
    proc = cli("-i", data_dir / "emd_1832.map", "-d", "out", "--memory-limit", "4MB", "--threads", "2", "--amplify", "--chunks", "16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("limit, chunks", [("7MB", "8 x 64 x 64"), ("3MB", "16 x 16 x 64")])
def test_automatic_chunks_are_made_smaller_to_fit_the_memory_limit(tmp_path, data_dir, cli, limit, chunks):
    """Under a limit the automatic 16-plane slabs do not fit, the run picks thinner slabs or, at
    a tighter one, bars of whole rows that do (says so in the log), and its outputs equal an
    unconstrained run's."""
    free = cli("-i", data_dir / "emd_1832.map", "-d", "free", "--amplify", "-q", cwd=tmp_path)
    assert free.returncode == 0, free.stderr
    bound = cli("-i", data_dir / "emd_1832.map", "-d", "bound", "--amplify", "-q", "--memory-limit", limit, "--threads", "2", cwd=tmp_path)
    assert bound.returncode == 0, bound.stderr
    log = (tmp_path / "bound" / "log_emd_1832.txt").read_text()
    line = next(line for line in log.splitlines() if line.startswith("Chunks"))
    assert f"{chunks} (automatic, made smaller to fit the memory limit)" in line
    for name in ("scale_occ_emd_1832.mrc", "conf_emd_1832.mrc", "out_emd_1832.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "free" / name), mrcfile.read(tmp_path / "bound" / name)), name


def test_fitted_chunks_choose_the_largest_that_fit():
    from occupy_dask.cluster import fitted_chunks, thread_memory
    from occupy_dask.settings import derive_settings

    s = derive_settings((256, 512, 512), 1.0, occupancy=True)  # automatic: 32-plane slabs, halo 4
    assert s.chunks == (32, 512, 512)
    need = {p: thread_memory((p, 512, 512), s.halo, 3, 2, writes_behind=True) for p in (32, 16, 8, 4)}
    limit = int(need[8] * 2 / 0.75) + 1  # two threads of 8-plane slabs fit, 16-plane ones do not
    fitted = fitted_chunks(s, 3, limit, 2, writes_behind=True)
    assert fitted.chunks == (8, 512, 512) and fitted.fitted_planes == 8
    assert fitted_chunks(s, 3, int(need[32] * 2 / 0.75) + 1, 2, writes_behind=True) is s  # the automatic chunks fit
    bar = {e: thread_memory((e, e, 512), s.halo, 3, 2, True) for e in (128, 64, 16)}
    bars = fitted_chunks(s, 3, int(bar[64] * 2 / 0.75) + 1, 2, writes_behind=True)  # no slab fits: bars of whole rows
    assert bars.chunks == (64, 64, 512) and bars.fitted_bar == 64 and bar[128] * 2 / 0.75 > int(bar[64] * 2 / 0.75) + 1
    cube = thread_memory((32, 32, 32), s.halo, 3, 2, True)
    assert cube < bar[16]
    cubes = fitted_chunks(s, 3, int(cube * 2 / 0.75) + 1, 2, writes_behind=True)  # not even a 16-row bar: cubes
    assert cubes.chunks == (32, 32, 32) and cubes.fitted_edge == 32
    assert fitted_chunks(s, 3, 1000, 2) is s  # nothing fits: left to the refusal
    chosen = derive_settings((256, 512, 512), 1.0, occupancy=True, chunks=32)
    assert fitted_chunks(chosen, 3, limit, 2) is chosen  # the user's chunks are never changed


def test_task_memory_numbers():
    # 64^3 chunk with halo 4: 72^3 float32 = 1.49 MB; 8 working blocks + 3 outputs
    assert task_memory((64, 64, 64), (4, 4, 4), 3) == 72**3 * 4 * 11
    check_task_memory((64, 64, 64), (4, 4, 4), 3, 10 * task_memory((64, 64, 64), (4, 4, 4), 3), 2, "here")
    with pytest.raises(ClusterError, match=r"4 thread\(s\) each"):
        check_task_memory((64, 64, 64), (4, 4, 4), 3, 2 * task_memory((64, 64, 64), (4, 4, 4), 3), 4, "here")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jobs", "0", "--cluster", "slurm", "--cluster-config", "x.yaml"], "--jobs must be at least 1"),
        (["--adaptive", "3:1", "--cluster", "slurm", "--cluster-config", "x.yaml"], "--adaptive MIN:MAX"),
        (["--adaptive", "many"], "--adaptive takes MIN:MAX"),
        (["--cluster", "slurm"], "--cluster-config FILE"),
        (["--cluster-config", "nothere.yaml"], "cannot read the cluster configuration"),
        (["--cluster", "pbs"], "unknown --cluster"),
        (["--scheduler-address", "tcp://127.0.0.1:1", "--scheduler-file", "s.json"], "not both"),
        (["--format", "tiff"], "unknown --format"),
        (["--format", "zarr", "-o", "x.mrc"], "--format says zarr"),
    ],
)
def test_cluster_and_format_usage_errors(tmp_path, data_dir, args, message, cli):
    proc = cli("-i", data_dir / "emd_1832.map", "-d", "out", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


SLURM_CONFIG = """\
jobqueue:
  slurm:
    cores: 2
    processes: 1
    memory: 3GB
    walltime: "00:20:00"
    queue: short
    account: cryoem
    interface: lo
    job-extra-directives: ["--exclusive"]
    job-script-prologue: ["module load cuda"]
"""


def test_print_job_script_renders_the_config(tmp_path, cli):
    config = tmp_path / "slurm.yaml"
    config.write_text(SLURM_CONFIG)
    proc = cli("--cluster", "slurm", "--cluster-config", config, "--print-job-script", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in (
        "#SBATCH -p short",
        "#SBATCH -A cryoem",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH -t 00:20:00",
        "#SBATCH --exclusive",
        "module load cuda",
    ):
        assert line in script, line
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script
    assert "--nthreads 2" in script and "--interface lo" in script and "#SBATCH --mem=" in script


def test_bad_cluster_config_is_one_clear_error(tmp_path, cli):
    config = tmp_path / "slurm.yaml"
    config.write_text("jobqueue:\n  pbs:\n    cores: 1\n")
    proc = cli("--cluster", "slurm", "--cluster-config", config, "--print-job-script", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no 'jobqueue: slurm:' section" in proc.stderr and "Traceback" not in proc.stderr


def test_threads_option_limits_the_pool(data_dir, tmp_path):
    seen = set()

    def probe(x):
        seen.add(threading.get_ident())
        time.sleep(0.01)
        return x

    import dask

    with connect(ClusterSpec(threads=1), quiet=True) as runner:
        runner(*[dask.delayed(probe)(i) for i in range(8)], label="probe")
        assert "1 thread(s)" in runner.describe()
    assert len(seen) == 1


def test_shipped_cluster_configs_load(tmp_path, cli):
    from pathlib import Path

    from occupy_dask.cluster import load_local_config, slurm_worker_memory

    configs = Path(__file__).parents[1] / "cluster_configs"
    assert load_local_config(configs / "local.yaml") == {"dashboard": False}
    memory, threads = slurm_worker_memory(ClusterSpec(mode="slurm", cluster_config=str(configs / "slurm.yaml")))
    assert (memory, threads) == (16 * 10**9, 4)
    proc = cli("--cluster", "slurm", "--cluster-config", configs / "slurm.yaml", "--print-job-script", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --cpus-per-task=8" in proc.stdout and "--nworkers 2" in proc.stdout and "tcp://127.0.0.1:" in proc.stdout


def test_dashboard_link_is_printed_and_the_maps_are_unchanged(tmp_path, data_dir, cli):
    proc = cli("-i", data_dir / "emd_1832.map", "-d", "dash", "--dashboard", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dask dashboard: http://127.0.0.1:" in proc.stderr
    assert "dask scheduler inproc://" in (tmp_path / "dash" / "log_emd_1832.txt").read_text()  # nothing listens but the dashboard
    elsewhere = cli("-i", data_dir / "emd_1832.map", "-d", "dash2", "--dashboard", "--dashboard-address", "127.0.0.1:0", "-q", cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert cli("-i", data_dir / "emd_1832.map", "--dashboard-address", ":8787", cwd=tmp_path).returncode == 2  # needs --dashboard
    plain = cli("-i", data_dir / "emd_1832.map", "-d", "plain", "-q", cwd=tmp_path)
    assert plain.returncode == 0
    for name in ("scale_res_emd_1832.mrc", "conf_emd_1832.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "dash" / name), mrcfile.read(tmp_path / "plain" / name))
