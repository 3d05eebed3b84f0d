"""Beyond localhost: a scheduler host and two worker hosts, each in its own network namespace
with its own address (veth pairs to a bridge in a hub namespace; a private range used only
there), talking TLS and sharing the filesystem. The run, submitted from the scheduler's host,
must equal the threaded one bit for bit. Needs root and `ip`; skipped with the reason elsewhere,
required in CI."""

import os
import shutil
import subprocess
import sys
import time
import uuid

import mrcfile
import numpy as np
import pytest

pytestmark = pytest.mark.slow

SUBNET = "10.213.77"  # inside the test's namespaces only
HOSTS = {"scheduler": 1, "worker1": 2, "worker2": 3}


def _ip(*args) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Network:
    """A hub namespace with a bridge, and one namespace per host linked to it by a veth pair."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.hub = f"occ{tag}hub"
        self.names = {host: f"occ{tag}{host[0]}{host[-1]}" for host in HOSTS}
        self.made = []
        try:
            self._build(tag)
        except BaseException:
            self.remove()
            raise

    def _build(self, tag):
        _ip("netns", "add", self.hub)
        self.made.append(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(self.names.items()):
            _ip("netns", "add", ns)
            self.made.append(ns)
            inner, outer = f"o{tag}{i}a", f"o{tag}{i}b"
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", self.hub)
            _ip("-n", self.hub, "link", "set", outer, "master", "br0")
            _ip("-n", self.hub, "link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def address(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def start(self, host: str, args, log) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.names[host], sys.executable, *map(str, args)], stdout=log, stderr=subprocess.STDOUT)

    def run(self, host: str, args, cwd) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.names[host], sys.executable, *map(str, args)]
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)

    def remove(self) -> None:
        for ns in reversed(self.made):  # deleting a namespace deletes its ends of the veth pairs
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def network(unavailable):
    reason = None
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "network namespaces need root and iproute2"
    else:
        try:
            net = Network()
        except (OSError, subprocess.CalledProcessError) as exc:
            reason = f"cannot make network namespaces here ({getattr(exc, 'stderr', exc)})"
    if reason is not None:
        unavailable(reason)
    yield net
    net.remove()


def _wait_for(path, text: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{path.name}: no '{text}' in time:\n{path.read_text(errors='replace') if path.exists() else ''}")


def test_scheduler_and_two_workers_on_their_own_hosts_with_tls(tmp_path, golden_dir, network):
    from distributed import Security

    security = Security.temporary()
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.write_text(security.tls_ca_file)
    cert.write_text(security.tls_client_cert)
    key.write_text(security.tls_client_key)
    tls = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
    flags = ["--amplify", "--chunks", "32", "-q"]
    threaded = subprocess.run(
        [sys.executable, "-m", "occupy_dask", "-i", golden_dir / "phantom96.mrc", "-d", tmp_path / "threads", *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert threaded.returncode == 0, threaded.stderr

    address = f"tls://{network.address('scheduler')}:8786"
    processes = []
    try:
        with open(tmp_path / "scheduler.log", "w") as log:
            args = [
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                network.address("scheduler"),
                "--port",
                "8786",
                "--protocol",
                "tls",
                "--no-dashboard",
                *tls,
            ]
            processes.append(network.start("scheduler", args, log))
        deadline = time.monotonic() + 60
        _wait_for(tmp_path / "scheduler.log", "Scheduler at", deadline)
        for host in ("worker1", "worker2"):
            with open(tmp_path / f"{host}.log", "w") as log:
                args = ["-m", "distributed.cli.dask_worker", address, "--host", network.address(host), "--nthreads", "1", "--no-dashboard"]
                args += ["--local-directory", tmp_path / host, *tls]
                processes.append(network.start(host, args, log))
        for host in ("worker1", "worker2"):
            _wait_for(tmp_path / f"{host}.log", "Registered to", deadline)

        remote = network.run(
            "scheduler",
            ["-m", "occupy_dask", "-i", golden_dir / "phantom96.mrc", "-d", tmp_path / "hosts", *flags, "--scheduler-address", address, *tls],
            tmp_path,
        )
        assert remote.returncode == 0, remote.stderr
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=30)

    log = (tmp_path / "hosts" / "log_phantom96.txt").read_text()
    assert f"dask scheduler {address} (TLS), 2 worker(s)" in log
    for host in ("worker1", "worker2"):  # both hosts computed
        assert f"tls://{network.address(host)}:" in (tmp_path / f"{host}.log").read_text()
    for name in ("scale_occ_phantom96.mrc", "conf_phantom96.mrc", "out_phantom96.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "threads" / name), mrcfile.read(tmp_path / "hosts" / name)), name
    assert not [p for p in (tmp_path / "hosts").iterdir() if p.name.startswith(".")]  # spilled stores removed


def test_the_hosts_cannot_reach_this_machine_s_loopback(network):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:  # a service of this machine, on its loopback
        port = server.getsockname()[1]
        probe = network.run("worker1", ["-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"], "/")
    assert probe.returncode != 0 and ("ConnectionRefused" in probe.stderr or "timed out" in probe.stderr)
