"""io/emdb.py and --emdb: an entry's main map fetched over HTTP, laid out as the EMDB archive."""

import gzip
import http.server
import shutil
import socket
import threading
from functools import partial

import mrcfile
import numpy as np
import pytest

from occupy_dask.errors import UsageError
from occupy_dask.io.emdb import EMDB_STRUCTURES, entry_number, map_url


@pytest.fixture
def mirror(tmp_path, data_dir):
    """A local HTTP server on 127.0.0.1 serving EMD-1832 as the archive lays it out."""
    root = tmp_path / "structures"
    entry = root / "EMD-1832" / "map"
    entry.mkdir(parents=True)
    with open(data_dir / "emd_1832.map", "rb") as src, gzip.open(entry / "emd_1832.map.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_entry_spellings_and_the_archive_layout(monkeypatch):
    assert entry_number("1832") == entry_number("EMD-1832") == entry_number("emd_1832") == "1832"
    monkeypatch.delenv("OCCUPY_DASK_EMDB_URL", raising=False)
    assert map_url("EMD-11007") == f"{EMDB_STRUCTURES}/EMD-11007/map/emd_11007.map.gz"
    monkeypatch.setenv("OCCUPY_DASK_EMDB_URL", "http://mirror.example/emdb/structures/")
    assert map_url("1832") == "http://mirror.example/emdb/structures/EMD-1832/map/emd_1832.map.gz"
    with pytest.raises(UsageError, match="not an EMDB entry"):
        entry_number("1832; rm -rf /")


def test_emdb_fetches_runs_and_removes_the_download(tmp_path, data_dir, mirror, cli):
    temp = tmp_path / "temp"
    temp.mkdir()
    fetched = cli("--emdb", "EMD-1832", "-d", "out", "--temp-dir", temp, "--report", cwd=tmp_path, env={"OCCUPY_DASK_EMDB_URL": mirror})
    assert fetched.returncode == 0, fetched.stderr
    assert f"fetching {mirror}/EMD-1832/map/emd_1832.map.gz" in fetched.stderr
    assert list(temp.iterdir()) == []  # the download and its decompressed copy are gone
    script = (tmp_path / "out" / "chimX_emd_1832.cxc").read_text()
    assert "open emdb:1832 name occupy_" in script  # ChimeraX fetches the input itself: the local copy is gone
    log = (tmp_path / "out" / "log_emd_1832.txt").read_text()
    assert f"EMD-1832 ({mirror}/EMD-1832/map/emd_1832.map.gz)" in log
    assert f"Input: EMD-1832 ({mirror}/EMD-1832/map/emd_1832.map.gz)." in (tmp_path / "out" / "report_emd_1832.html").read_text()
    local = cli("-i", data_dir / "emd_1832.map", "-d", "local", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    for name in ("scale_res_emd_1832.mrc", "conf_emd_1832.mrc"):
        assert np.array_equal(mrcfile.read(tmp_path / "out" / name), mrcfile.read(tmp_path / "local" / name))


def test_unknown_entry_and_offline_each_say_so_in_one_line(tmp_path, mirror, cli):
    unknown = cli("--emdb", "99999", "-d", "out", cwd=tmp_path, env={"OCCUPY_DASK_EMDB_URL": mirror})
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1].endswith("HTTP 404 File not found (no such entry, or it has no map)")
    assert len([line for line in unknown.stderr.splitlines() if "error" in line]) == 1
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    offline = cli("--emdb", "1832", "-d", "out", cwd=tmp_path, env={"OCCUPY_DASK_EMDB_URL": closed})
    assert offline.returncode == 1
    last = offline.stderr.strip().splitlines()[-1]
    assert "EMDB entry 1832 could not be fetched" in last and "OCCUPY_DASK_EMDB_URL" in last
    assert not (tmp_path / "out").exists()
