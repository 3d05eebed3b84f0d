"""Reporting at the edge: the settings/limits log, the ChimeraX script, the console table."""

from __future__ import annotations

from pathlib import Path

from . import __version__
from .pipeline import Estimate

# ChimeraX palette over [min_vis_scale, 1]: low scale red through white to blue (full scale).
PALETTE = ("#d73027", "#fc8d59", "#fee090", "#ffffff", "#91bfdb", "#4575b4")


def limits(est: Estimate, variability_limit: float | None) -> list[tuple[str, str, str]]:
    """(name, unit, value) rows of everything derived (ALGORITHM.md section 10)."""
    s = est.settings
    sm = est.solvent_model
    rows = [
        ("Input", "", str(est.info.path) if est.info.path else est.info.name),
        ("Box (stored order)", "voxels", " x ".join(map(str, s.shape))),
        ("Voxel size", "Å", ", ".join(f"{v:.4f}" for v in s.voxel_size)),
        ("Low-pass", "Å", f"{s.lowpass_angstrom:.2f}" + ("" if s.lowpass_applied else " (not applied: below Nyquist)")),
        ("Scale mode", "", {"res": "res (raw input)", "occ": "occ (low-passed input)"}[s.scale_mode]),
        ("Kernel size", "voxels", " x ".join(map(str, s.kernel_size))),
        ("Kernel radius", "voxels", ", ".join(f"{r:.2f}" for r in s.kernel_radius_voxels)),
        ("Kernel n_v", "voxels", str(s.n_v)),
        ("Tau", "0-1", f"{s.tau:.4f}"),
        ("Tile size", "voxels", str(s.tile_size)),
        ("Tile grid", "", "default (stride = tile size)" if s.tile_grid is None else f"{s.tile_grid} per axis"),
        ("Tiles used", "", str(est.n_tiles)),
        ("Best tile (index)", "", str(est.best_tile)),
        ("Best tile centre", "voxels", ", ".join(f"{c:.1f}" for c in est.best_tile_centre)),
        ("Full scale s_max", "map units", f"{est.s_max:.6g}"),
        ("Solvent region", "", est.solvent_region),
        ("Solvent peak mu", "map units", f"{sm.mu:.6g}"),
        ("Solvent width sigma", "map units", f"{sm.sigma:.6g}"),
        ("Solvent edge", "map units", f"{est.solvent_edge:.6g}"),
        ("Content at 1% of solvent", "map units", f"{est.content_1pct:.6g}"),
        ("Confidence limit", "scale", f"{est.confidence_limit:.4f}"),
        ("Variability limit", "scale", "n/a" if variability_limit is None else f"{variability_limit:.4f}"),
        ("Hedge confidence", "", "off" if s.hedge_confidence is None else f"{s.hedge_confidence:g}"),
        ("Noise-level recalibration", "", "on" if s.nlrc else "off"),
        ("Reference-compatible", "", "yes" if s.reference_compatible else "no"),
        ("Chunk edge", "voxels", str(s.chunk_edge)),
    ]
    return rows


def write_log(path: Path, est: Estimate, variability_limit: float | None, outputs: dict[str, Path]) -> None:
    width = max(len(r[0]) for r in limits(est, variability_limit))
    lines = [f"occupy_dask {__version__}: local map scale (OccuPy method)", ""]
    for name, unit, value in limits(est, variability_limit):
        lines.append(f"{name:<{width}}  {('[' + unit + ']') if unit else '':<11} {value}")
    if est.warnings:
        lines += ["", "Warnings:"] + [f"  {w}" for w in est.warnings]
    lines += ["", "Outputs:"] + [f"  {kind:<12} {p.name}" for kind, p in outputs.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _quote(path: Path) -> str:
    return '"' + str(path.resolve()).replace('"', '\\"') + '"'


def chimerax_script(est: Estimate, input_path: Path, scale_path: Path, modified: list[Path]) -> str:
    """A .cxc that opens the input and scale maps, colours the input surface by the scale with a
    fixed palette over [min visible scale, 1], and opens any modified maps coloured the same way."""
    level = (est.s_max + est.solvent_edge) / 2.0
    low = max(0.0, min(est.confidence_limit, 0.95))
    steps = len(PALETTE) - 1
    palette = ":".join(f"{low + (1.0 - low) * i / steps:.4f},{c}" for i, c in enumerate(PALETTE))
    lines = [
        f"# occupy_dask {__version__}: input coloured by local scale ({est.settings.scale_mode} mode)",
        f"open {_quote(input_path)}",
        f"open {_quote(scale_path)}",
        "volume #2 hide",
        f"volume #1 level {level:.6g} style surface",
        f"color sample #1 map #2 palette {palette}",
    ]
    for i, path in enumerate(modified, start=3):
        lines += [
            f"open {_quote(path)}",
            f"volume #{i} level {level:.6g} style surface",
            f"color sample #{i} map #2 palette {palette}",
            f"hide #{i} models",
        ]
    lines += ["view", "lighting soft"]
    return "\n".join(lines) + "\n"
