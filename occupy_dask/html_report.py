"""``--report``: one self-contained HTML file to look at a result (no network, no external files).

Slices of the input, the scale, the confidence and each modified map, side by side on the same
slice: nine slices per stored axis behind a slider, the scale's contour at the confidence limit
drawn on the input. Then the solvent model and modification plots, and every number of the log
with what it means. Slices are read lazily from the written outputs, plane by plane, so a
report costs a few reads of each map whatever its size.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from .estimation import Estimate
from .fused import modified_name
from .io.read import axis_names, open_map
from .report import MEANINGS, limits, modification_figure, noise_floor_figure, solvent_figure
from .version import __version__

SLICES = 9  # per axis
MAX_PIXELS = 320  # longest side of a slice image; larger maps are sampled with a stride
CONTOUR = (230, 30, 30)  # the scale's contour at the confidence limit, on the input


def write_report(
    path: Path,
    est: Estimate,
    input_path: Path,
    written: dict[str, Path],
    computed_on: str | None = None,
    input_source=None,
    min_vis_scale=None,
    input_label: str | None = None,
) -> None:
    """Write ``report_<name>.html`` for an estimate whose maps were written to ``written``; the
    input's slices come from ``input_source`` when given (an opened map), else from its file;
    ``min_vis_scale`` is the ChimeraX colouring's chosen lower end (for the table of numbers);
    ``input_label`` names the input when its path does not (an EMDB entry's temporary copy)."""
    maps = {"input": input_source if input_source is not None else input_path, "scale": written["scale"], "confidence": written["confidence"]}
    for i, mod in enumerate(est.settings.modifications):
        if modified_name(i) in written:
            maps[f"modified: {mod.describe()}"] = written[modified_name(i)]
    shape = est.info.shape
    positions = [np.unique(np.linspace(n * 0.1, n * 0.9 - 1, SLICES).round().astype(int).clip(0, n - 1)) for n in shape]
    slices = {label: slices_on_grid(file, shape, positions) for label, file in maps.items()}
    names = axis_names(est.info)
    sections = [_axis_section(axis, names[axis], positions[axis], slices, est) for axis in range(3)]
    plots = [_figure_png(figure(est)) for figure in (solvent_figure, modification_figure, noise_floor_figure)]
    page = _page(est, input_label or str(input_path), sections, [p for p in plots if p], written, computed_on, min_vis_scale)
    path.write_text(page, encoding="utf-8")


def slices_on_grid(where, shape, positions) -> list[dict[int, np.ndarray]]:
    """:func:`read_slices` of a map on the estimate's grid ``shape``; a map on a finer grid of
    the same box (a --max-box preview's modified maps) is read at the same places in Å."""
    if not isinstance(where, Path):
        return read_slices(where, shape, positions)
    with open_map(where) as opened:
        own = tuple(opened.source.shape)
        if own == tuple(shape):
            return read_slices(opened.source, shape, positions)
        at = [{int(p): min(n - 1, int(round((p + 0.5) * n / m - 0.5))) for p in ps} for ps, n, m in zip(positions, own, shape)]
        found = read_slices(opened.source, own, [sorted(set(a.values())) for a in at])
    return [{p: found[axis][q] for p, q in at[axis].items()} for axis in range(3)]


def read_slices(where, shape, positions) -> list[dict[int, np.ndarray]]:
    """For each stored axis, the slices at ``positions[axis]`` of a map (a file, or an opened
    source), sampled with a stride so that no side exceeds MAX_PIXELS; read plane by plane
    (sections), each plane once."""
    if isinstance(where, Path):
        with open_map(where) as opened:
            return read_slices(opened.source, shape, positions)
    stride = [max(1, -(-n // MAX_PIXELS)) for n in shape]
    found: list[dict[int, list]] = [{p: [] for p in positions[0]}, {p: [] for p in positions[1]}, {p: [] for p in positions[2]}]
    wanted = set(range(0, shape[0], stride[0])) | set(int(p) for p in positions[0])
    for z in sorted(wanted):
        plane = np.asarray(where[z : z + 1, :, :], dtype=np.float32)[0]
        if z in found[0]:
            found[0][z] = plane[:: stride[1], :: stride[2]]
        if z % stride[0] == 0:
            for y in positions[1]:
                found[1][y].append(plane[y, :: stride[2]])
            for x in positions[2]:
                found[2][x].append(plane[:: stride[1], x])
    return [found[0], {y: np.stack(rows) for y, rows in found[1].items()}, {x: np.stack(cols) for x, cols in found[2].items()}]


def _axis_section(axis: int, name: str, positions, slices: dict, est: Estimate) -> str:
    """A row of panels (one per map) for slices across stored axis ``axis``, with a slider."""
    limit = est.confidence_limit
    panels = []
    for label, per_axis in slices.items():
        coloured = label in ("scale", "confidence")
        grey_range = None if coloured else _display_range(per_axis)  # one grey scale for all of a map's panels
        images = []
        for p in positions:
            data = per_axis[axis][p]
            rgb = _viridis(np.clip(data, 0.0, 1.0)) if coloured else _grey(data, grey_range)
            if label == "input":
                rgb[_contour(slices["scale"][axis][p] >= limit)] = CONTOUR
            images.append(_png_uri(rgb))
        panels.append((label, images))
    axis_id = f"axis{axis}"
    figures = "".join(
        f'<figure><figcaption>{html.escape(label)}</figcaption><img class="slice" data-axis="{axis_id}" '
        f'data-frames="{html.escape(" ".join(images))}" src="{images[len(images) // 2]}" alt="{html.escape(label)}"></figure>'
        for label, images in panels
    )
    labels = " ".join(str(int(p)) for p in positions)
    return (
        f'<section class="axis"><h3>Slices across {name} (stored axis {axis})</h3>'
        f'<label>{name} = <output id="{axis_id}-at">{positions[len(positions) // 2]}</output> '
        f'<input type="range" min="0" max="{len(positions) - 1}" value="{len(positions) // 2}" '
        f'data-axis="{axis_id}" data-labels="{labels}" aria-label="slice across {name}"></label>'
        f'<div class="row">{figures}</div></section>'
    )


def _display_range(per_axis) -> tuple[float, float]:
    """0.5 and 99.5 percentiles of a map's central slices (its grey scale in every panel)."""
    values = np.concatenate([per_axis[a][sorted(per_axis[a])[len(per_axis[a]) // 2]].ravel() for a in range(3)])
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _grey(data: np.ndarray, value_range) -> np.ndarray:
    lo, hi = value_range
    level = (np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(level[..., None], 3, axis=2)


def _viridis(data: np.ndarray) -> np.ndarray:
    return (_lut()[(data * 255).astype(np.int64)] * 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3]


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a neighbour (4-connected) outside it."""
    edge = np.zeros_like(mask)
    edge[1:, :] |= mask[1:, :] & ~mask[:-1, :]
    edge[:-1, :] |= mask[:-1, :] & ~mask[1:, :]
    edge[:, 1:] |= mask[:, 1:] & ~mask[:, :-1]
    edge[:, :-1] |= mask[:, :-1] & ~mask[:, 1:]
    return edge


def _png_uri(rgb: np.ndarray) -> str:
    """An 8-bit RGB image as a PNG data URI."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + np.ascontiguousarray(row).tobytes() for row in rgb)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_png(fig) -> str | None:
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _colour_bar() -> str:
    stops = ", ".join(f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f}) {i * 10}%" for i, (r, g, b) in enumerate(_lut()[::25][:11]))
    return f'<div class="bar"><span>0</span><div style="background: linear-gradient(to right, {stops})"></div><span>1</span></div>'


def _page(est: Estimate, input_label: str, sections: list[str], plots: list[str], written: dict[str, Path], computed_on, min_vis_scale=None) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(u)}</td><td>{html.escape(v)}</td><td>{html.escape(MEANINGS.get(n, ''))}</td></tr>"
        for n, u, v in limits(est, min_vis_scale, input_label)
    )
    t = est.target_occupancy
    target = f"<p class=key>Target occupancy: <b>{t.occupancy:.4f}</b> ({t.n_voxels} voxels in the mask)</p>" if t is not None else ""
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in est.warnings)
    outputs = "".join(f"<li>{html.escape(kind)}: {html.escape(p.name)}</li>" for kind, p in written.items())
    images = "".join(f'<img class="plot" src="{uri}" alt="plot">' for uri in plots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>occupy-dask report: {html.escape(est.info.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.row {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; }} figcaption {{ font-size: 0.85em; margin-bottom: 4px; }}
img.slice {{ width: 260px; image-rendering: pixelated; border: 1px solid #ccc; }}
img.plot {{ max-width: 100%; margin: 8px 0; }}
.bar {{ display: flex; align-items: center; gap: 6px; font-size: 0.85em; }} .bar div {{ width: 240px; height: 14px; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; }}
.key {{ font-size: 1.1em; }} .legend {{ color: rgb{CONTOUR}; }}
</style></head><body>
<h1>occupy-dask report: {html.escape(est.info.name)}</h1>
<p>occupy_dask {__version__}, local map scale (OccuPy method), {est.settings.scale_mode} mode. Input: {html.escape(input_label)}.
{html.escape(computed_on or "")}</p>
<p class=key>Full scale s_max {est.s_max:.4g}; confidence limit {est.confidence_limit:.3f};
variability limit {"n/a" if est.variability_limit is None else f"{est.variability_limit:.3f}"}.</p>
{target}
<h2>Slices</h2>
<p>Scale and confidence from 0 to 1: {_colour_bar()}
<span class=legend>Red line on the input</span>: the scale's contour at the confidence limit ({est.confidence_limit:.3f}).
Move a slider to step through nine slices.</p>
{"".join(sections)}
<h2>Solvent model and modification</h2>
{images}
<h2>Settings and detected limits</h2>
<table>{rows}</table>
{f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""}
<h2>Files</h2><ul>{outputs}</ul>
<script>
for (const slider of document.querySelectorAll("input[type=range]")) {{
  const labels = slider.dataset.labels.split(" ");
  slider.addEventListener("input", () => {{
    for (const img of document.querySelectorAll(`img[data-axis="${{slider.dataset.axis}}"]`)) {{
      img.src = img.dataset.frames.split(" ")[slider.value];
    }}
    document.getElementById(`${{slider.dataset.axis}}-at`).textContent = labels[slider.value];
  }});
}}
window.addEventListener("load", () => {{
  const images = [...document.images];
  document.body.dataset.decoded = images.every((img) => img.complete && img.naturalWidth > 0) ? "all" : "missing";
  document.body.dataset.images = String(images.length);
}});
</script>
</body></html>
"""
