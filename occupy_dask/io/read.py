"""Lazy map input: MRC/CCP4 (plain or gzip) and in-memory arrays, read block by block.

A *source* is a small picklable object with ``shape`` and ``__getitem__`` returning float32;
it opens the file inside ``__getitem__`` so that no array ever enters a task graph.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import MapError
from .zarr_chunks import plain_layout, read_plain_block, will_need

SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs", ".rec", ".mrc.gz", ".map.gz", ".ccp4.gz", ".ome.zarr", ".zarr")
UNIT_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "picometer": 0.01}


@dataclass(frozen=True)
class MrcSource:
    """Read-only window onto the data block of an MRC file (stored axis order)."""

    path: str
    offset: int
    file_dtype: str
    shape: tuple[int, int, int]

    ndim = 3
    dtype = np.dtype(np.float32)

    def _memmap(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.dtype(self.file_dtype), mode="r", offset=self.offset, shape=self.shape)

    def __getitem__(self, key) -> np.ndarray:
        """Read a block as float32 (see :meth:`read_into`); other keys go through a memmap."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != 3 or not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
            return np.asarray(self._memmap()[key], dtype=np.float32)
        shape = tuple(max(b - a, 0) for a, b in (k.indices(n)[:2] for k, n in zip(key, self.shape)))
        return self.read_into(key, np.empty(shape, dtype=np.float32))

    def read_into(self, key: tuple[slice, slice, slice], out: np.ndarray, keep_from: int | None = None) -> np.ndarray:
        """Read the block ``key`` (unit-step slices) into the float32 array ``out`` with
        positioned reads (a block of whole planes in one, else one span of whole-width rows per
        plane), cheaper than faulting in a memmap; a block of whole planes also starts the disk
        on the next block's planes.
        (``keep_from``: see :func:`read_block`; the input is never dropped from the page cache.)"""
        (z0, z1), (y0, y1), (x0, x1) = (k.indices(n)[:2] for k, n in zip(key, self.shape))
        nz, ny, nx = self.shape
        dtype = np.dtype(self.file_dtype)
        if out.size == 0:
            return out
        whole_rows = x0 == 0 and x1 == nx and dtype == np.dtype("<f4") and out[0].flags.c_contiguous
        span = None if whole_rows else np.empty((y1 - y0) * nx, dtype=dtype)
        with open(self.path, "rb", buffering=0) as f:
            row_bytes = nx * dtype.itemsize
            if z1 - z0 > 1 and (y1 - y0) < ny:  # spans apart in the file: ask for all of them at once
                for z in range(z0, z1):
                    will_need(f.fileno(), self.offset + (z * ny + y0) * row_bytes, (y1 - y0) * row_bytes)
            elif y1 - y0 == ny:  # whole planes, one span: it and the next slab's (the pass reads it next) asked for at once
                will_need(f.fileno(), self.offset + z0 * ny * row_bytes, (min(nz, 2 * z1 - z0) - z0) * ny * row_bytes)
            if whole_rows and y1 - y0 == ny and out.flags.c_contiguous:  # whole planes: one span of the file
                self._read_span(f, memoryview(out.reshape(-1)).cast("B"), self.offset + z0 * ny * row_bytes)
                return out
            for z in range(z1 - z0):
                target = out[z] if whole_rows else span
                start = self.offset + ((z0 + z) * ny + y0) * row_bytes
                self._read_span(f, memoryview(target.reshape(-1)).cast("B"), start)
                if not whole_rows:
                    out[z] = span.reshape(y1 - y0, nx)[:, x0:x1]
        return out

    def _read_span(self, f, view: memoryview, start: int) -> None:
        """Fill ``view`` from ``start`` in the file, in as few reads as the system allows (a
        read returns at most about 2 GB on Linux). Each read takes the interpreter lock once:
        plane by plane, a slab's reads waited on a thread that held it."""
        done = 0
        while done < view.nbytes:
            got = os.preadv(f.fileno(), [view[done:]], start + done)
            if got <= 0:
                raise MapError(f"{self.path}: the file ends inside its data block (truncated?)")
            done += got


@dataclass(frozen=True, eq=False)
class ArraySource:
    """An in-memory float32 array behind the same interface (for the threaded scheduler)."""

    array: np.ndarray

    ndim = 3
    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.array[key], dtype=np.float32)


@dataclass(frozen=True)
class ZarrSource:
    """A float32 zarr array on disk, opened inside each read."""

    path: str
    shape: tuple[int, int, int]
    scratch: bool = False  # a temporary store of ours: read chunks are dropped from the page cache

    ndim = 3
    dtype = np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        import zarr

        return np.asarray(zarr.open_array(self.path, mode="r")[key], dtype=np.float32)

    def read_into(self, key: tuple[slice, slice, slice], out: np.ndarray, keep_from: int | None = None) -> np.ndarray:
        """Read the block ``key`` into ``out``: a plain store of ours (the spilled maps) straight
        from its chunk files (see :mod:`occupy_dask.io.zarr_chunks`), any other through zarr."""
        layout = plain_layout(self.path)
        if layout is None or layout.dtype != np.dtype("<f4"):
            out[...] = self[key]
            return out
        return read_plain_block(self.path, layout, self.shape, key, out, drop=self.scratch, keep_from=keep_from, ahead=self.scratch)


@dataclass(frozen=True)
class FiniteSource:
    """Another source with its NaN and infinite voxels replaced by ``value`` on every read."""

    source: object
    value: float

    ndim = 3
    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.source.shape)

    def __getitem__(self, key) -> np.ndarray:
        block = np.array(self.source[key], dtype=np.float32)
        block[~np.isfinite(block)] = np.float32(self.value)
        return block


def read_block(source, key: tuple[slice, slice, slice], out: np.ndarray, keep_from: int | None = None) -> np.ndarray:
    """``source[key]`` written into ``out`` (directly, when the source can). ``keep_from``: in
    a pass over slabs, the first plane that the next slab reads too; a scratch store that drops
    what it has read from the page cache keeps those planes there."""
    if hasattr(source, "read_into"):
        return source.read_into(key, out, keep_from=keep_from)
    out[...] = source[key]
    return out


def next_slab_start(start, stop, shape, below: int = 0) -> int | None:
    """For a block of whole planes (a slab), the first plane the next slab's read needs (its
    start less ``below`` planes of halo); None for any other block."""
    if tuple(start[1:]) != (0, 0) or tuple(stop[1:]) != tuple(shape[1:]):
        return None
    return int(stop[0]) - int(below)


def read_with_halo(source, start, stop, halo, out: np.ndarray | None = None) -> np.ndarray:
    """Read ``[start - halo, stop + halo)`` per axis; beyond the array, mirror the data
    (numpy ``symmetric`` = scipy ``reflect``). With ``out`` (of the padded shape) the data is
    read into it and mirrored in place, with the same result as ``np.pad``."""
    lo = [max(s - h, 0) for s, h in zip(start, halo)]
    hi = [min(e + h, n) for e, h, n in zip(stop, halo, source.shape)]
    key = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = [(a - (s - h), (e + h) - b) for a, b, s, e, h in zip(lo, hi, start, stop, halo)]
    fits = all(p <= b - a for pair, a, b in zip(pad, lo, hi) for p in pair)
    if out is None or not fits:  # mirroring more than the data itself: leave it to np.pad
        block = source[key]
        if any(p for pair in pad for p in pair):
            block = np.pad(block, pad, mode="symmetric")
        if out is None:
            return block
        out[...] = block
        return out
    inner = tuple(slice(p[0], p[0] + (b - a)) for p, a, b in zip(pad, lo, hi))
    read_block(source, key, out[inner], keep_from=next_slab_start(start, stop, source.shape, below=halo[0]))
    region = list(inner)
    for axis, (before, after) in enumerate(pad):  # axis by axis, as np.pad does
        first, last = region[axis].start, region[axis].stop
        for width, dst, src in (
            (before, slice(first - before, first), slice(first, first + before)),
            (after, slice(last, last + after), slice(last - after, last)),
        ):
            if width:
                target, origin = list(region), list(region)
                target[axis], origin[axis] = dst, src
                out[tuple(target)] = np.flip(out[tuple(origin)], axis=axis)
        region[axis] = slice(0, out.shape[axis])
    return out


@dataclass
class MapInfo:
    """Geometry and header of an input map, kept to write outputs with the same header."""

    path: Path | None
    name: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]  # Å per stored axis (sections, rows, columns)
    header: np.recarray | None = None
    axis_order: tuple[int, int, int] = (1, 2, 3)  # mapc, mapr, maps
    start: tuple[int, int, int] = (0, 0, 0)  # nxstart, nystart, nzstart
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: object = field(default=None, repr=False)


def map_name(path: Path) -> str:
    """The name used in output files: the file name without its map (and gzip) suffix."""
    name = path.name
    for suffix in sorted(MAP_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _stored_voxel_size(header) -> tuple[float, float, float]:
    """Voxel size in Å along (sections, rows, columns) from cell and sampling (x, y, z)."""
    cella = [float(header.cella[a]) for a in ("x", "y", "z")]
    sampling = [int(header.mx), int(header.my), int(header.mz)]
    axis_len = [int(header.nx), int(header.ny), int(header.nz)]
    per_xyz = []
    for length, m, fallback in zip(cella, sampling, axis_len):
        intervals = m if m > 0 else fallback
        per_xyz.append(length / intervals if intervals > 0 and length > 0 else 0.0)
    mapc, mapr, maps = stored_axis_order((int(header.mapc), int(header.mapr), int(header.maps)))
    return (per_xyz[maps - 1], per_xyz[mapr - 1], per_xyz[mapc - 1])


def stored_axis_order(axis_order) -> tuple[int, int, int]:
    """(mapc, mapr, maps) when they permute 1, 2, 3; else (1, 2, 3), as mrcfile reads such a map."""
    order = tuple(int(a) for a in axis_order)
    return order if sorted(order) == [1, 2, 3] else (1, 2, 3)


def axis_names(info: MapInfo) -> tuple[str, str, str]:
    """Names of the stored axes (sections, rows, columns): z, y, x unless the header permutes them."""
    mapc, mapr, maps = stored_axis_order(info.axis_order)
    return ("xyz"[maps - 1], "xyz"[mapr - 1], "xyz"[mapc - 1])


class MapInput:
    """An opened input map: ``info`` and a lazy ``source``; removes its temporary copy on close."""

    def __init__(self, info: MapInfo, source, temp_path: Path | None = None):
        self.info = info
        self.source = source
        self._temp_path = temp_path

    def close(self) -> None:
        if self._temp_path is not None and self._temp_path.exists():
            self._temp_path.unlink()
        self._temp_path = None

    def __enter__(self) -> MapInput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _gunzip(path: Path, temp_dir: str | None) -> Path:
    fd, tmp = tempfile.mkstemp(prefix="occupy_dask_", suffix=".mrc", dir=temp_dir)
    try:
        with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
    except (OSError, EOFError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MapError(f"{path}: cannot decompress gzip file ({exc})") from None
    return Path(tmp)


def open_map(path: str | os.PathLike, temp_dir: str | None = None, role: str = "map") -> MapInput:
    """Open an MRC/CCP4 map (``.gz`` decompressed to a temporary file) lazily, read-only."""
    path = Path(path)
    if not path.exists():
        raise MapError(f"{path}: no such {role} file")
    if path.is_dir() and ((path / "zarr.json").exists() or (path / ".zarray").exists() or (path / ".zgroup").exists()):
        info, source = _open_zarr(path, role)
        info.source = source
        return MapInput(info, source)
    if path.is_dir():
        raise MapError(f"{path}: is a directory, not a {role} file")
    temp_path = None
    data_path = path
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        temp_path = data_path = _gunzip(path, temp_dir)
    try:
        info, source = _read_header(path, data_path)
    except BaseException:
        if temp_path is not None:
            temp_path.unlink(missing_ok=True)
        raise
    info.source = source
    return MapInput(info, source, temp_path)


def _read_header(path: Path, data_path: Path) -> tuple[MapInfo, MrcSource]:
    size = data_path.stat().st_size
    if size < 1024:
        raise MapError(f"{path}: not an MRC map (file of {size} bytes is shorter than an MRC header)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(data_path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header.copy()
                nsymbt = int(mrc.header.nsymbt)
    except Exception as exc:  # mrcfile raises ValueError and friends with varied messages
        raise MapError(f"{path}: not a readable MRC map ({exc})") from None
    if header is None or bytes(header.map) not in (b"MAP ", b"MAP\x00", b"MAP"):
        raise MapError(f"{path}: not an MRC map (no 'MAP ' identifier in the header)")
    mode = int(header.mode)
    if mode not in SUPPORTED_MODES:
        raise MapError(f"{path}: unsupported MRC data mode {mode} (supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODES.items()) + ")")
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1 or nx * ny * nz > 2**40:
        raise MapError(f"{path}: impossible dimensions in the header ({nx} x {ny} x {nz})")
    if nz == 1 or ny == 1 or nx == 1:
        raise MapError(f"{path}: a 2D image ({nx} x {ny} x {nz}), a 3D volume is needed")
    if int(header.ispg) == 0 and nz > 1:
        raise MapError(f"{path}: an image stack (space group 0, {nz} images), a 3D volume is needed")
    dtype = mrcfile.utils.data_dtype_from_header(header)
    shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(header))
    offset = 1024 + max(nsymbt, 0)
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if size < needed:
        raise MapError(f"{path}: truncated MRC file (header says {needed} bytes of header and data, file has {size})")
    voxel_size = _stored_voxel_size(header)
    if min(voxel_size) <= 0 or not np.all(np.isfinite(voxel_size)):
        raise MapError(f"{path}: the header gives no valid voxel size ({voxel_size} Å)")
    axis_order = (int(header.mapc), int(header.mapr), int(header.maps))
    info = MapInfo(
        path=path,
        name=map_name(path),
        shape=shape,
        voxel_size=tuple(float(v) for v in voxel_size),
        header=header,
        axis_order=axis_order,
        start=(int(header.nxstart), int(header.nystart), int(header.nzstart)),
        origin=tuple(float(header.origin[a]) for a in ("x", "y", "z")),
    )
    source = MrcSource(str(data_path.absolute()), offset, dtype.str, shape)
    return info, source


def _zarr_geometry(attrs) -> dict:
    """The map geometry occupy_dask writes into zarr attributes (empty when absent)."""
    meta = attrs.get("occupy_dask") if hasattr(attrs, "get") else None
    return dict(meta) if isinstance(meta, dict) else {}


def _open_zarr(path: Path, role: str) -> tuple[MapInfo, ZarrSource]:
    """A zarr v2/v3 array, or an OME-Zarr image (its full-resolution level), read lazily. The voxel
    size comes from occupy_dask's attributes or the OME scale transform of level 0."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several kinds for unreadable metadata
        raise MapError(f"{path}: not a readable zarr store ({exc})") from None
    geometry = _zarr_geometry(node.attrs)
    voxel_size = geometry.get("voxel_size_angstrom")
    array_path = path
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        multiscales = (attrs.get("ome") or attrs).get("multiscales")
        if not multiscales:
            raise MapError(f"{path}: a zarr group without OME-NGFF multiscales metadata, not a {role}")
        image = multiscales[0]
        level0 = image["datasets"][0]
        array_path = path / level0["path"]
        node = zarr.open_array(str(array_path), mode="r")
        if voxel_size is None:
            scales = [t["scale"] for t in level0.get("coordinateTransformations", []) if t.get("type") == "scale"]
            axes = image.get("axes", [])
            units = [a.get("unit", "angstrom") if isinstance(a, dict) else "angstrom" for a in axes][-3:]
            if scales and all(u in UNIT_ANGSTROM for u in units):
                voxel_size = [float(v) * UNIT_ANGSTROM[u] for v, u in zip(scales[0][-3:], units)]
    if node.ndim != 3:
        raise MapError(f"{path}: a {node.ndim}D zarr array, a 3D volume is needed")
    if not np.issubdtype(node.dtype, np.number) or np.issubdtype(node.dtype, np.complexfloating):
        raise MapError(f"{path}: unsupported zarr data type {node.dtype}")
    if voxel_size is None or len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise MapError(f"{path}: no voxel size in the zarr attributes (occupy_dask.voxel_size_angstrom or an OME scale in angstrom)")
    order = geometry.get("axis_order", {})
    info = MapInfo(
        path=path,
        name=map_name(path),
        shape=tuple(int(n) for n in node.shape),
        voxel_size=tuple(float(v) for v in voxel_size),
        axis_order=(int(order.get("mapc", 1)), int(order.get("mapr", 2)), int(order.get("maps", 3))),
        start=tuple(int(geometry.get("mrc_start", {}).get(a, 0)) for a in "xyz"),
        origin=tuple(float(geometry.get("mrc_origin", {}).get(a, 0.0)) for a in "xyz"),
    )
    return info, ZarrSource(str(array_path.absolute()), info.shape)


def check_same_grid(other: MapInfo, info: MapInfo, role: str) -> None:
    """Refuse a mask whose shape or voxel size differs from the map's (0.1% tolerance)."""
    if tuple(other.shape) != tuple(info.shape):
        raise MapError(f"{other.path}: {role} has shape {other.shape}, the map has {info.shape}")
    if not np.allclose(other.voxel_size, info.voxel_size, rtol=1e-3):
        raise MapError(
            f"{other.path}: {role} voxel size {tuple(round(v, 4) for v in other.voxel_size)} Å differs from "
            f"the map's {tuple(round(v, 4) for v in info.voxel_size)} Å"
        )
