"""Reporting at the edge: the settings/limits log, the ChimeraX script, the console table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .estimation import Estimate
from .fused import modification_factor
from .io.read import axis_names
from .outputs import output_kind
from .settings import Modification
from .solvent import gaussian
from .version import __version__

# ChimeraX palette over [min_vis_scale, 1]: low scale red through white to blue (full scale).
PALETTE = ("#d73027", "#fc8d59", "#fee090", "#ffffff", "#91bfdb", "#4575b4")


MEANINGS = {
    "Box (stored order)": "voxels along the stored axes (sections, rows, columns)",
    "Voxel size": "along the stored axes, in the order named in the unit",
    "Low-pass": "spatial frequencies up to 1/low-pass are kept for the solvent model and confidence",
    "Scale mode": "which map the local maximum is taken of",
    "Kernel size": "box of the ball kernel along the stored axes",
    "Kernel radius": "ball radius along the stored axes (low-pass / 2 in voxels)",
    "Kernel n_v": "voxels in the kernel",
    "Tau": "quantile of each tile taken as its full-scale candidate (root of x^n_v + x - 1)",
    "Tile size": "edge of the tiles the full-scale reference is searched in",
    "Tiles used": "tiles whose centre lies inside the inscribed ellipsoid",
    "Best tile (index)": "the tile the full scale comes from",
    "Best tile centre": "its centre along the stored axes",
    "Full scale s_max": "this value of the scale data is scale 1 (see Full-scale normalisation)",
    "Solvent region": "the voxels the solvent model is fitted to",
    "Solvent peak mu": "centre of the Gaussian solvent model (low-passed map)",
    "Solvent width sigma": "width of the solvent model",
    "Solvent edge": "highest value where the solvent model is still >= 1e-9: above it nothing is solvent",
    "Content at 1% of solvent": "above this value content makes up more than 1% of every histogram bin",
    "Confidence limit": "scale at which the confidence reaches 0.5: lower scales are mostly solvent",
    "Variability limit": "mean scale data at full scale over s_max: how much full-scale density varies",
    "Confident content": "voxels with confidence above 0.5",
    "ChimeraX level": "input level whose surface encloses the confident content (the script's contour)",
    "ChimeraX colour key from": "lowest scale the script's colouring tells apart (lower scales share its colour)",
    "Hedge confidence": "confidence raised to this power",
    "Noise-level recalibration": "scale stretched from [confidence limit, 1] onto [0, 1]",
    "Reference-compatible": "the reference OccuPy 0.1.13's conventions",
    "Chunks": "blocks the map is processed in (results do not depend on them)",
    "Amplify limit": "scales at or below it are left unmodified",
    "Solvent": "what modified maps do where the confidence is low",
    "Low-pass of modified maps": "--lowpass-amplified",
    "Synthetic solvent seed": "seed of the noise added where attenuation removed signal",
    "Target mask voxels": "voxels of the target mask above its threshold",
    "Target tau": "tau for that many voxels",
    "Target full scale": "the full-scale reference recomputed at the target's tau",
    "Target occupancy": "largest scale data in the mask over the target's full scale",
}


def limits(est: Estimate, min_vis_scale: float | None = None, input_label: str | None = None) -> list[tuple[str, str, str]]:
    """(name, unit, value) rows of everything derived (docs/method.md section 10);
    ``min_vis_scale`` is the lowest scale the ChimeraX colouring resolves, when chosen, and
    ``input_label`` names the input when its path does not (an EMDB entry's temporary copy)."""
    s = est.settings
    variability_limit = est.variability_limit
    axes = ", ".join(axis_names(est.info))
    sm = est.solvent_model
    rows = [
        ("Input", "", input_label or (str(est.info.path) if est.info.path else est.info.name)),
        ("Box (stored order)", "voxels", " x ".join(map(str, s.shape))),
        *(
            [
                (
                    "Preview (--max-box)",
                    "voxels",
                    f"input box {' x '.join(map(str, s.full_shape))} Fourier-cropped to the box above; modified maps at the input's box",
                )
            ]
            if s.full_shape
            else []
        ),
        ("Voxel size", f"Å; {axes}", ", ".join(f"{v:.4f}" for v in s.voxel_size)),
        ("Low-pass", "Å", f"{s.lowpass_angstrom:.2f}" + ("" if s.lowpass_applied else " (not applied: below Nyquist)")),
        ("Scale mode", "", {"res": "res (raw input)", "occ": "occ (low-passed input)"}[s.scale_mode]),
        ("Kernel size", f"voxels; {axes}", " x ".join(map(str, s.kernel_size))),
        ("Kernel radius", f"voxels; {axes}", ", ".join(f"{r:.2f}" for r in s.kernel_radius_voxels)),
        *(
            [("Kernel radius note", "", f"radius exceeds half the box along {', '.join(cut)}: the ball is cut there")]
            if (cut := [a for a, r, k in zip(axes.split(", "), s.kernel_radius_voxels, s.kernel_size) if r > k / 2])
            else []
        ),
        ("Kernel n_v", "voxels", str(s.n_v)),
        ("Tau", "0-1", f"{s.tau:.4f}"),
        ("Full-scale normalisation", "", "S0: tau x the largest scale-data value (no tiles)" if s.s0 else "SW: the largest tile quantile at tau"),
        *(
            []
            if s.s0  # no tiles: s_max is tau times the largest value
            else [
                ("Tile size", "voxels", str(s.tile_size)),
                ("Tile grid", "", "default (stride = tile size)" if s.tile_grid is None else f"{s.tile_grid} per axis"),
                ("Tiles used", "", str(est.n_tiles)),
                ("Best tile (index)", "", str(est.best_tile)),
                ("Best tile centre", f"voxels; {axes}", ", ".join(f"{c:.1f}" for c in est.best_tile_centre)),
            ]
        ),
        ("Full scale s_max", "map units", f"{est.s_max:.6g}"),
        ("Solvent region", "", est.solvent_region),
        ("Solvent peak mu", "map units", f"{sm.mu:.6g}"),
        ("Solvent width sigma", "map units", f"{sm.sigma:.6g}"),
        ("Solvent edge", "map units", f"{est.solvent_edge:.6g}"),
        ("Content at 1% of solvent", "map units", f"{est.content_1pct:.6g}"),
        ("Confidence limit", "scale", f"{est.confidence_limit:.4f}"),
        ("Variability limit", "scale", "n/a" if variability_limit is None else f"{variability_limit:.4f}"),
        ("Confident content", "voxels", f"{est.confident_voxels}"),
        ("ChimeraX level", "map units", "n/a" if est.display_level is None else f"{est.display_level:.6g}"),
        (
            "ChimeraX colour key from",
            "scale",
            f"{colour_key_low(est, min_vis_scale):.4f}" + (" (--min-vis-scale)" if min_vis_scale is not None else ""),
        ),
        ("Hedge confidence", "", "off" if s.hedge_confidence is None else f"{s.hedge_confidence:g}"),
        ("Noise-level recalibration", "", "on" if s.nlrc else "off"),
        *noise_floor_rows(est),
        ("Reference-compatible", "", "yes" if s.reference_compatible else "no"),
        ("Solvent definition threshold", "0-1", f"{s.solvent_def_threshold:g} (--solvent-def voxels above it are solvent)"),
        ("Target mask threshold", "0-1", f"{s.target_threshold:g} (--target-mask voxels above it are the target)"),
        ("Flattened-map limit", "fraction", f"{s.flattened_fraction:g} (more exact zeros inside the inscribed sphere: refused)"),
        ("Pure-noise limit", "ratio", f"{s.noise_power_ratio:g} (low-pass power over white noise's below it: refused)"),
        ("Chunks", "voxels", " x ".join(map(str, s.chunks)) + _chunks_note(s)),
    ]
    for mod in s.modifications:
        rows.append(("Modification", "", describe_modification(mod)))
    if s.modifications:
        rows += [
            ("Amplify limit", "scale", f"{s.scale_limit:.3f}"),
            ("Solvent", "", "excluded (flattened to 0)" if s.exclude_solvent else "retained"),
            ("Low-pass of modified maps", "Å", "off" if s.lowpass_output_angstrom is None else f"{s.lowpass_output_angstrom:.2f}"),
            ("Confidence weighting", "", "omitted (--omit-confidence: solvent is modified too)" if s.omit_confidence else "on"),
            ("Histogram matching", "", "on (modified maps take the input's grey scale)" if s.hist_match else "off (clipped to the input's range)"),
        ]
        if any(m.kind == "attenuate" for m in s.modifications) and not s.exclude_solvent:
            rows.append(("Synthetic solvent seed", "", str(s.seed)))
    t = est.target_occupancy
    if t is not None:
        rows += [
            ("Target mask voxels", "voxels", str(t.n_voxels)),
            ("Target tau", "0-1", f"{t.tau:.4f}"),
            ("Target full scale", "map units", f"{t.s_max:.6g}"),
            ("Target occupancy", "0-1", f"{t.occupancy:.4f}" + (" (nlrc)" if t.nlrc_limit is not None else "")),
        ]
    return rows


def _chunks_note(s) -> str:
    if s.chunk_edge is not None:
        return ""
    if (s.fitted_planes, s.fitted_bar, s.fitted_edge) != (None, None, None):
        return " (automatic, made smaller to fit the memory limit)"
    return " (automatic)"


def noise_floor_rows(est: Estimate) -> list[tuple[str, str, str]]:
    """Log rows of ``--debias``: the noise floor and how it was obtained."""
    nf = est.noise_floor
    if nf is None:
        return [("Debiased scale", "", "off")]
    return [
        ("Debiased scale", "", "on: scale = h^-1(local max) / h^-1(s_max), h = local max of signal plus noise"),
        ("Noise floor", "map units", f"{nf.floor:.6g} (local max that solvent noise alone reaches, median)"),
        ("Noise floor as scale", "scale", f"{nf.floor / est.s_max:.4f} (what the method reads on pure solvent)"),
        ("Noise of the scale data", "map units", f"mu {nf.mu:.6g}, sigma {nf.sigma:.6g}, {nf.correlation}"),
        ("Noise spectrum in the band", "Å^2", f"B {nf.falloff:.4g}: power exp(-B k^2/2) up to the band's edge ({nf.spectrum})"),
        ("Signal texture kappa", "", f"{nf.kappa:.4f} (sd / level of density in the {nf.texture_tiles} densest tiles, above the noise)"),
        ("Full scale above noise", "map units", f"{nf.signal_max:.6g} (s_max as signal above the solvent mean, the noise's lift removed)"),
    ]


def describe_modification(mod: Modification) -> str:
    """A modification for the log and plots: its description and the factor it applies."""
    if mod.kind == "exclude":
        return "solvent exclusion only"
    if mod.kind == "sigmoid":
        return f"{mod.describe()} (factor f(S)/S)"
    return f"{mod.describe()} (factor S^{mod.exponent:.4g})"


def write_log(
    path: Path, est: Estimate, outputs: dict[str, Path], computed_on: str | None = None, min_vis_scale: float | None = None, input_label=None
) -> None:
    rows = limits(est, min_vis_scale, input_label)
    width = max(len(r[0]) for r in rows)
    unit_width = max(len(u) + 2 for _, u, _ in rows if u)
    value_width = min(max(len(r[2]) for r in rows if r[0] in MEANINGS), 28)
    lines = [f"occupy_dask {__version__}: local map scale (OccuPy method)", ""]
    if computed_on:
        lines += [f"Computed on: {computed_on}", ""]
    for name, unit, value in rows:
        meaning = f"  {value:<{value_width}}  # {MEANINGS[name]}" if name in MEANINGS else f"  {value}"
        lines.append(f"{name:<{width}}  {('[' + unit + ']') if unit else '':<{unit_width}}{meaning}".rstrip())
    if est.warnings:
        lines += ["", "Warnings:"] + [f"  {w}" for w in est.warnings]
    kinds = {name: output_kind(name, est) for name in outputs}
    width = max(len(k) for k in kinds.values())
    lines += ["", "Outputs:"] + [f"  {kinds[name]:<{width}}  {p.name}" for name, p in outputs.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


UNSAFE_IN_SCRIPTS = set('"*?[]') | {chr(c) for c in range(32)} | {chr(127)}


def chimerax_path(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (ChimeraX runs a .cxc from its own folder, so the script
    keeps working when the folder is copied elsewhere), double-quoted for a .cxc; None when the
    name cannot be quoted safely. ChimeraX ends a quoted token at a quote followed by a space and
    reads each line as a command, so a quote or a control character (a newline) could end the
    file name and start a command; wildcards would open other files."""
    relative = Path(os.path.relpath(path.absolute(), folder.absolute())).as_posix()
    if not relative.startswith("../"):
        relative = f"./{relative}"  # never read as ~ (home) or as an option
    if any(c in UNSAFE_IN_SCRIPTS for c in relative):
        return None
    return f'"{relative}"'


def chimerax_script(
    est: Estimate,
    script: Path,
    input_path: Path,
    scale_path: Path,
    modified: list[Path],
    min_vis_scale: float | None = None,
    emdb_entry: str | None = None,
) -> str | None:
    """A .cxc beside the outputs that opens the input and scale maps, colours the input surface by
    the scale with a fixed palette over [lowest coloured scale, 1] and draws that colour key, and
    opens any modified maps coloured the same way; None (and a warning on ``est``) when a file
    name cannot be written into it safely (see :func:`chimerax_path`).

    Models are named when opened (``occupy_<tag>_input``, ...) and every later command selects
    them by that name (``##name=``), not by number: the script works in a session where other
    models are open. The lowest coloured scale is ``min_vis_scale``, else the confidence limit.
    An input fetched from the EMDB (``emdb_entry``, its digits) is opened from there too, since
    the downloaded copy is removed after the run.
    """
    paths = [input_path, scale_path, *modified]
    tokens = [chimerax_path(p, script.parent) for p in paths]
    if emdb_entry is not None:
        tokens[0] = f"emdb:{int(emdb_entry)}"  # digits only: nothing in it can end the token
    if None in tokens:
        unsafe = paths[tokens.index(None)]
        est.warnings.append(
            f"no ChimeraX script: the name {str(unsafe)!r} cannot be written safely into a .cxc (quotes, control or wildcard "
            "characters); open the maps in ChimeraX by hand, or rename the input"
        )
        return None
    level = est.display_level if est.display_level is not None else (est.s_max + est.solvent_edge) / 2.0
    low = colour_key_low(est, min_vis_scale)
    steps = len(PALETTE) - 1
    stops = [(low + (1.0 - low) * i / steps, c) for i, c in enumerate(PALETTE)]
    palette = ":".join(f"{v:.4f},{c}" for v, c in stops)
    key = " ".join(f"{c}:{v:.2f}" if i in (0, steps) else f"{c}:" for i, (v, c) in enumerate(stops))
    tag = model_tag(script)
    names = [f"occupy_{tag}_input", f"occupy_{tag}_scale", *(f"occupy_{tag}_modified{i}" for i in range(1, len(modified) + 1))]
    lines = [
        f"# occupy_dask {__version__}: input coloured by local scale ({est.settings.scale_mode} mode), scale {low:.2f}-1 coloured",
        f"open {tokens[0]} name {names[0]}",
        f"open {tokens[1]} name {names[1]}",
        f"volume ##name={names[1]} hide",
        f"volume ##name={names[0]} level {level:.6g} style surface",
        f"color sample ##name={names[0]} map ##name={names[1]} palette {palette}",
    ]
    for token, name in zip(tokens[2:], names[2:]):
        lines += [
            f"open {token} name {name}",
            f"volume ##name={name} level {level:.6g} style surface",
            f"color sample ##name={name} map ##name={names[1]} palette {palette}",
            f"hide ##name={name} models",
        ]
    lines += [f"key {key} pos 0.05,0.06 size 0.35,0.04", "view", "lighting soft"]
    return "\n".join(lines) + "\n"


def colour_key_low(est: Estimate, min_vis_scale: float | None = None) -> float:
    """The lowest scale the ChimeraX colouring resolves: ``--min-vis-scale``, else the
    confidence limit (scales below it are not told apart from solvent), at most 0.95."""
    low = est.confidence_limit if min_vis_scale is None else min_vis_scale
    return max(0.0, min(float(low), 0.95))


def model_tag(script: Path) -> str:
    """Six hex digits from the script's name: the models of two results opened in one session
    get different names."""
    import hashlib

    return hashlib.sha1(script.name.encode("utf-8", "surrogateescape")).hexdigest()[:6]


# --------------------------------------------------------------------------- plots


def solvent_plot_data(est: Estimate) -> dict[str, np.ndarray]:
    """What ``solModel_<name>.png`` shows, in map units: the solvent-region histogram density,
    the initial guess and the fitted solvent model at the fit positions, the whole low-passed
    map's histogram, and the confidence (content fraction) per bin of it."""
    model, table = est.solvent_model, est.confidence
    return {
        "x": np.asarray(model.x, dtype=np.float64),
        "density": model.density,
        "guess": gaussian(np.asarray(model.x, dtype=np.float64), *model.guess),
        "fit": model(model.x),
        "map_x": table.edges[:-1].astype(np.float64),
        "map_density": table.density,
        "confidence": np.clip(table.fraction, 0.0, 1.0),
        "solvent_edge": np.float64(est.solvent_edge),
        "content_1pct": np.float64(est.content_1pct),
        "confidence_limit_value": np.float64(est.confidence.limit_value),
    }


def modification_curve_data(est: Estimate, n: int = 1000) -> dict[str, np.ndarray]:
    """What ``modification_<name>.png`` shows: for scale S on [0, 1], the scale after each
    modification, ``S * factor(S)`` (the identity line means unchanged)."""
    s = est.settings
    scale = np.linspace(0.0, 1.0, n).astype(np.float32)
    curves = {}
    for mod in s.modifications:
        if mod.kind != "exclude":
            factor = modification_factor(mod, scale, s.scale_limit, s.reference_compatible)
            curves[describe_modification(mod)] = scale.astype(np.float64) * factor
    return {"scale": scale.astype(np.float64), "curves": curves}


def save_plots(est: Estimate, paths: dict[str, Path]) -> dict[str, Path]:
    """Write the solvent-model plot (and the modification curve when modifying, the noise floor
    with --debias) as PNG."""
    written = {}
    for key, figure in (("plot", solvent_figure), ("plot_modification", modification_figure), ("plot_noise_floor", noise_floor_figure)):
        if key in paths:
            fig = figure(est)
            if fig is not None:
                fig.savefig(paths[key])
                written[key] = paths[key]
    return written


def solvent_figure(est: Estimate):
    """The solvent model: region histogram, initial guess and fit (log scale), the whole map's
    histogram, and the confidence per bin with its 0.5 level."""
    from matplotlib.figure import Figure

    d = solvent_plot_data(est)
    fig = Figure(figsize=(13, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    positive = d["density"] > 0
    ax.semilogy(d["x"][positive], d["density"][positive], color="black", lw=1, label="solvent region histogram")
    if est.solvent_region != "inscribed ellipsoid":
        shown = d["map_density"] > 0
        ax.semilogy(d["map_x"][shown], d["map_density"][shown], color="0.6", lw=1, label="whole map histogram")
    ax.semilogy(d["x"], d["guess"], color="tab:blue", alpha=0.5, lw=1, label="solvent model: initial guess")
    ax.semilogy(d["x"], d["fit"], color="tab:green", lw=2, label="solvent model: fit")
    floor = d["density"][positive].min() * 0.5
    ax.set_ylim(floor, d["density"].max() * 2)
    ax.axvline(d["solvent_edge"], color="tab:green", ls=":", label=f"solvent edge {d['solvent_edge']:.3g}")
    ax.axvline(d["content_1pct"], color="tab:green", ls="--", label=f"content 1% of solvent {d['content_1pct']:.3g}")
    ax.set_xlabel("low-passed map value (map units)")
    ax.set_ylabel("histogram density (log)")
    conf_ax = ax.twinx()
    conf_ax.plot(d["map_x"], d["confidence"], color="tab:red", lw=2, label="confidence")
    conf_ax.axvline(d["confidence_limit_value"], color="tab:red", ls="--", lw=1, label=f"confidence 0.5 at {d['confidence_limit_value']:.3g}")
    conf_ax.set_ylim(-0.02, 1.02)
    conf_ax.set_ylabel("confidence (content fraction)", color="tab:red")
    handles = ax.get_legend_handles_labels()
    more = conf_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8)
    scale_data = "low-passed map units" if est.settings.scale_mode == "occ" else "raw map units, not this axis's"
    ax.set_title(
        f"{est.info.name}: solvent model (mu {est.solvent_model.mu:.3g}, sigma {est.solvent_model.sigma:.3g}); s_max {est.s_max:.3g} ({scale_data})"
    )
    return fig


def modification_figure(est: Estimate):
    """The scale after each modification against the scale (None without a modification of the scale)."""
    from matplotlib.figure import Figure

    m = modification_curve_data(est)
    if not m["curves"]:
        return None
    fig = Figure(figsize=(6, 6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(m["scale"], m["scale"], color="0.6", ls="--", label="unchanged")
    for label, curve in m["curves"].items():
        ax.plot(m["scale"], curve, lw=2, label=label)
    if any(mod.kind in ("amplify", "attenuate") for mod in est.settings.modifications):  # the sigmoid does not use it
        ax.axvline(est.settings.scale_limit, color="0.3", ls=":", label=f"amplify limit {est.settings.scale_limit:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("estimated local scale S")
    ax.set_ylabel("scale after modification, S x factor(S)")
    ax.set_title(f"{est.info.name}: modification by local scale")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def noise_floor_figure(est: Estimate):
    """``--debias``: the distribution of the local maximum that solvent noise alone reaches under
    the kernel, with the noise floor marked, and the response of the maximum filter to signal
    plus noise that the scale is corrected by (None without --debias)."""
    from matplotlib.figure import Figure

    nf = est.noise_floor
    if nf is None:
        return None
    fig = Figure(figsize=(13, 5), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.hist(nf.noise_maxima, bins=60, density=True, color="0.7", label="local max of solvent noise (simulated with the solvent model)")
    left.axvline(nf.mu, color="0.3", ls=":", label=f"solvent mean mu {nf.mu:.3g}")
    left.axvline(nf.floor, color="tab:red", lw=2, label=f"noise floor {nf.floor:.3g} (scale {nf.floor / est.s_max:.3f})")
    left.axvline(est.s_max, color="tab:blue", ls="--", label=f"full scale s_max {est.s_max:.3g}")
    left.set_xlabel(f"local maximum under the kernel ({'low-passed' if est.settings.scale_mode == 'occ' else 'raw'} map units)")
    left.set_ylabel("density")
    left.set_title("noise alone under the kernel")
    left.legend(fontsize=8, loc="upper right")
    right.plot(nf.signal_levels, nf.response, color="tab:red", lw=2, label="local max of signal plus noise (median)")
    right.plot(nf.signal_levels, nf.signal_levels + nf.mu, color="0.6", ls="--", label="no noise")
    right.axhline(nf.floor, color="tab:red", ls=":", lw=1, label=f"noise floor {nf.floor:.3g}")
    right.axvline(nf.signal_max, color="tab:blue", ls="--", label=f"s_max as signal without noise {nf.signal_max:.3g}")
    right.set_xlabel("signal maximum in the kernel, above the solvent mean (map units)")
    right.set_ylabel("measured local maximum (map units)")
    right.set_title(f"response of the max filter (noise sigma {nf.sigma:.3g}, B {nf.falloff:.3g} Å², texture kappa {nf.kappa:.3f})", fontsize=10)
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{est.info.name}: noise floor of the local scale (--debias)")
    return fig
