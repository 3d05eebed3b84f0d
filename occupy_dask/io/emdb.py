"""``--emdb ID``: the main map of an EMDB entry, fetched from the archive or a mirror of it.

The archive lays an entry out as ``<base>/EMD-<id>/map/emd_<id>.map.gz``; ``<base>`` is the
EMDB's ``structures`` folder, or the environment variable ``OCCUPY_DASK_EMDB_URL`` (a mirror,
or a local copy as a ``file://`` URL).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import MapError, UsageError

EMDB_URL_VARIABLE = "OCCUPY_DASK_EMDB_URL"
EMDB_STRUCTURES = "https://ftp.ebi.ac.uk/pub/databases/emdb/structures"
TIMEOUT_S = 30.0
_ENTRY = re.compile(r"^(?:emd[-_]?)?(\d{4,6})$", re.IGNORECASE)


def entry_number(entry: str) -> str:
    """The digits of an EMDB entry given as ``1832``, ``EMD-1832`` or ``emd_1832``."""
    found = _ENTRY.match(str(entry).strip())
    if not found:
        raise UsageError(f"--emdb {entry!r} is not an EMDB entry; give its number, e.g. --emdb 1832 or --emdb EMD-1832")
    return found.group(1)


def map_url(entry: str, base: str | None = None) -> str:
    """Where the archive keeps the main map of ``entry``."""
    number = entry_number(entry)
    base = (base or os.environ.get(EMDB_URL_VARIABLE) or EMDB_STRUCTURES).rstrip("/")
    return f"{base}/EMD-{number}/map/emd_{number}.map.gz"


def fetch_map(entry: str, folder: str | os.PathLike | None = None, progress=None) -> Path:
    """Download the gzipped main map of ``entry`` into a new private folder under ``folder``
    (the system's temporary folder when None) and return its path, ``emd_<id>.map.gz``; the
    caller removes the folder. ``progress(done_bytes, total_bytes or None)`` is called as it
    arrives. Offline, an unknown entry or a broken download raise MapError (one line)."""
    number = entry_number(entry)
    url = map_url(number)
    where = Path(tempfile.mkdtemp(prefix="occupy_dask_emdb_", dir=folder))
    target = where / f"emd_{number}.map.gz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(target, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise MapError(f"EMDB entry {number}: the download from {url} stopped after {done} of {total} bytes; try again")
    except urllib.error.HTTPError as exc:
        shutil.rmtree(where, ignore_errors=True)
        unknown = " (no such entry, or it has no map)" if exc.code == 404 else ""
        raise MapError(f"EMDB entry {number} could not be fetched: {url} answered HTTP {exc.code} {exc.reason}{unknown}") from None
    except (urllib.error.URLError, OSError) as exc:
        shutil.rmtree(where, ignore_errors=True)
        reason = getattr(exc, "reason", None) or exc
        raise MapError(
            f"EMDB entry {number} could not be fetched from {url} ({reason}); check the network, "
            f"or set {EMDB_URL_VARIABLE} to a mirror of the archive's structures folder"
        ) from None
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise
    return target
